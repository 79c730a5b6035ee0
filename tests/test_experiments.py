"""The percentile tracker: what a layer receives, recorded over training."""

import pytest
import torch
from torch import nn

from bncourse import data, experiments, models, train


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
    train.train(model, split, steps=20, lr=0.1, progress=False, on_step=tracker)
    assert tracker.steps == [0, 5, 10, 15, 20]
    assert tracker.values.shape == (5, 3, 16)
    assert not torch.equal(tracker.values[0], tracker.values[-1])  # the weights moved
    assert model.training  # the probe leaves the train/eval mode as it was


def test_probe_uses_eval_mode_and_leaves_batch_norm_statistics_alone():
    torch.manual_seed(0)
    model = models.mlp([3, 5, 2], activation="sigmoid", norm="bn")
    before = model[1].running_mean.clone()
    experiments.track_percentiles(model, model[2], torch.randn(30, 3) + 5)
    assert torch.equal(model[1].running_mean, before)


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
    with pytest.raises(RuntimeError, match="nothing recorded"):
        _ = experiments.PercentileTracker(model, model[1], torch.randn(5, 4)).values
