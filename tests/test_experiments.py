"""The percentile and moment trackers: what a layer receives, recorded over training."""

import copy

import pytest
import torch
from torch import nn

from bncourse.lab import data, experiments, models
from bncourse.lab.trainer import built, each, train


def test_records_the_percentiles_of_the_layer_input():
    torch.manual_seed(0)
    model = models.mlp([4, 6, 3], activation="sigmoid")
    x = torch.randn(50, 4)
    tracker = experiments.track_percentiles(model, model[1], x, q=(10, 50, 90))
    expected = torch.quantile(model[0](x).detach(), torch.tensor([0.1, 0.5, 0.9]), dim=0)
    assert tracker.steps == [0]
    torch.testing.assert_close(tracker.values[0], expected)
    assert tracker.values.shape == (1, 3, 6)


def test_as_on_step_callback_it_records_every_k_steps_and_follows_training():
    split = data.digits()
    torch.manual_seed(0)
    model = models.mlp([64, 16, 10], activation="sigmoid")
    tracker = experiments.track_percentiles(model, model[1], split.x_test, every=5)
    train([model], split, 20, 0.1, progress=False, on_step=each([tracker]))
    assert tracker.steps == [0, 5, 10, 15, 20]
    assert tracker.values.shape == (5, 3, 16)
    assert not torch.equal(tracker.values[0], tracker.values[-1])  # the weights moved
    assert model.training  # the probe leaves the train/eval mode as it was


def test_probe_uses_eval_mode_and_leaves_batch_norm_statistics_and_modes_alone():
    torch.manual_seed(0)
    model = models.mlp([3, 5, 2], activation="sigmoid", norm="bn")
    model[1].eval()  # a frozen BN layer inside a model in training mode stays frozen
    before = model[1].running_mean.clone()
    experiments.track_percentiles(model, model[2], torch.randn(30, 3) + 5)
    assert torch.equal(model[1].running_mean, before)
    assert model.training and not model[1].training


def test_batch_stats_sees_the_probe_set_as_a_training_step_does_and_eval_mode_does_not():
    split = data.digits()
    torch.manual_seed(0)
    model = models.mlp([64, 16, 10], activation="sigmoid", norm="bn")
    train([model], split, 5, 0.1, progress=False)  # running stats still far off
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = torch.tensor([0.15, 0.5, 0.85])
    trackers = {}
    for batch_stats in (False, True):
        trackers[batch_stats] = experiments.track_percentiles(model, model[2], split.x_test,
                                                              batch_stats=batch_stats)
        z = copy.deepcopy(model).train(batch_stats)[:2](split.x_test).detach()
        torch.testing.assert_close(trackers[batch_stats].values[0], torch.quantile(z, q, dim=0))
    assert (trackers[True].values - trackers[False].values).abs().max() > 1
    assert all(torch.equal(b, model.state_dict()[k]) for k, b in before.items())
    assert model.training


def test_conv_inputs_get_percentiles_per_channel():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU())
    tracker = experiments.track_percentiles(model, model[1], torch.randn(4, 1, 6, 6))
    assert tracker.values.shape == (1, 3, 3)


def test_bad_input_raises_clear_errors():
    model = models.mlp([4, 6, 3])
    with pytest.raises(ValueError, match="inside model"):
        experiments.track_percentiles(model, nn.ReLU(), torch.randn(5, 4))
    with pytest.raises(ValueError, match="every"):
        experiments.track_percentiles(model, model[1], torch.randn(5, 4), every=0)
    with pytest.raises(ValueError, match="percentiles in \\[0, 100\\]"):
        experiments.track_percentiles(model, model[1], torch.randn(5, 4), q=(0.5, 150))
    with pytest.raises(TypeError, match="batch_stats"):
        experiments.track_percentiles(model, model[1], torch.randn(5, 4), batch_stats="yes")
    with pytest.raises(RuntimeError, match="nothing recorded"):
        _ = experiments.PercentileTracker(model, model[1], torch.randn(5, 4)).values


def test_moments_are_each_units_mean_and_biased_std_and_follow_training():
    torch.manual_seed(0)
    model = models.mlp([4, 6, 3], activation="sigmoid")
    x = torch.randn(50, 4) * 3 + 1
    tracker = experiments.track_moments(model, model[1], x)
    z = model[0](x).detach()
    torch.testing.assert_close(tracker.values[0], torch.stack([z.mean(0), z.std(0, correction=0)]))
    assert tracker.values.shape == (1, 2, 6) and tracker.steps == [0]


def test_one_moment_tracker_per_member_through_each():
    split = data.digits()
    make = lambda: models.mlp([64, 16, 10], activation="sigmoid")  # noqa: E731
    seeds = [0, 1, 2]
    members = [built(make, s) for s in seeds]
    trackers = [experiments.track_moments(m, m[1], split.x_test, every=5) for m in members]
    train(members, split, 10, 0.5, seeds=seeds, progress=False, on_step=each(trackers))
    for seed, tracker in zip(seeds, trackers, strict=True):
        alone = built(make, seed)  # the same member trained on its own
        single = experiments.track_moments(alone, alone[1], split.x_test, every=5)
        train([alone], split, 10, 0.5, seeds=[seed], progress=False, on_step=each([single]))
        assert tracker.steps == single.steps == [0, 5, 10]
        torch.testing.assert_close(tracker.values, single.values, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(trackers[0].values[-1], trackers[1].values[-1])  # own seeds


def test_moment_tracker_leaves_batch_norm_alone_and_rejects_bad_input():
    torch.manual_seed(0)
    model = models.mlp([3, 5, 2], activation="sigmoid", norm="bn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_mode = experiments.track_moments(model, model[2], torch.randn(30, 3) + 5,
                                           batch_stats=True)
    assert all(torch.equal(b, model.state_dict()[k]) for k, b in before.items())
    torch.testing.assert_close(train_mode.values[0, 0], model[1].bias.detach())  # beta
    with pytest.raises(ValueError, match="every"):
        experiments.track_moments(model, model[1], torch.randn(5, 3), every=0)
    with pytest.raises(RuntimeError, match="nothing recorded"):
        _ = experiments.MomentTracker(model, model[1], torch.randn(5, 3)).values
