"""Chapter 5's experiment pieces: sweeps, probes, trackers, noisy batch norm, landscape probes."""

import pytest
import torch
from torch import nn

from bncourse import nn as bnn
from bncourse.lab import benefits, models
from bncourse.lab.data import Split
from bncourse.lab.trainer import built, each, train


def tiny_split(n=120, seed=0) -> Split:
    """A linearly separable 3-class problem with 8 features."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    y = (x[:, :3] @ torch.tensor([[1.0, -1, 0], [0, 1, -1], [-1, 0, 1]])).argmax(1)
    return Split(x[: n // 2], y[: n // 2], x[n // 2 :], y[n // 2 :])


def test_scaled_digits_uses_the_training_statistics():
    split = benefits.scaled_digits()
    assert split.x_train.mean().abs() < 1e-5
    assert (split.x_train.std() - 1).abs() < 1e-5
    assert split.x_test.mean().abs() > 1e-4  # the test split is scaled with the training statistics
    assert split.x_train.shape[1] == 64 and len(split.x_train) + len(split.x_test) == 1797


def test_bn_linear_is_invariant_to_the_weight_scale_and_its_gradient_shrinks_by_k():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    dout = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    out, g = benefits.bn_linear_grad(x, w, dout)
    out_k, g_k = benefits.bn_linear_grad(x, 10 * w, dout)
    torch.testing.assert_close(out_k, out, rtol=1e-4, atol=1e-4)  # up to eps / var ~ 1e-6
    torch.testing.assert_close(g_k, g / 10, rtol=1e-4, atol=1e-8)
    # each row's gradient is orthogonal to the row: scaling a row changes nothing (up to eps)
    cosine = (g * w).sum(1) / (g.norm(dim=1) * w.norm(dim=1))
    assert cosine.abs().max() < 1e-4
    # with a tiny scale eps dominates the variance and the invariance breaks
    out_tiny, _ = benefits.bn_linear_grad(x, 1e-4 * w, dout)
    assert (out_tiny - out).abs().max() > 0.5
    with pytest.raises(ValueError, match=r"\(out, in\)"):
        benefits.bn_linear(x, torch.randn(3, 4, dtype=torch.float64))


def test_batch_noise_matches_its_first_order_prediction():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2000, 20, generator=gen, dtype=torch.float64) * 3 + 5
    measured = benefits.batch_noise(h, 7, [4, 32], draws=3000, generator=gen)
    predicted = benefits.predicted_batch_noise(h, 7, [4, 32])
    assert measured.shape == predicted.shape == (2, 20)
    ratio = (measured / predicted)[1]
    assert (ratio - 1).abs().median() < 0.05
    assert measured[0].median() > 2 * measured[1].median()  # smaller batches, noisier statistics
    with pytest.raises(ValueError, match="index"):
        benefits.batch_noise(h, 5000, [4])
    with pytest.raises(ValueError, match="batch sizes"):
        benefits.batch_noise(h, 0, [1])


def test_sweep_reports_the_largest_value_that_trains_every_seed():
    acc = torch.tensor([[0.95, 0.96], [0.97, 0.5], [0.99, 0.99]])
    diverged = torch.tensor([[False, False], [False, False], [True, False]])
    sweep = benefits.Sweep([0.1, 1.0, 10.0], [0, 1], acc, torch.zeros(3, 2), diverged)
    assert sweep.trains(0.9).tolist() == [True, False, False]
    assert sweep.largest_trainable(0.9) == 0.1
    assert sweep.largest_trainable(0.999) is None


def test_lr_sweep_trains_each_seed_and_flags_divergence():
    split = tiny_split()
    make = lambda: models.mlp([8, 16, 3], "relu")  # noqa: E731
    sweep = benefits.lr_sweep(make, split, [0.3, 1e5], steps=30, seeds=(0, 1), batch_size=20)
    assert sweep.test_acc.shape == (2, 2) and sweep.values == [0.3, 1e5]
    assert (sweep.test_acc[0] > 0.6).all() and not sweep.diverged[0].any()
    assert sweep.diverged[1].all() or (sweep.test_acc[1] < 0.6).all()
    again = benefits.lr_sweep(make, split, [0.3], steps=30, seeds=(0, 1), batch_size=20)
    assert torch.equal(again.test_acc[0], sweep.test_acc[0])  # seeded: reproducible
    with pytest.raises(ValueError, match="at least one"):
        benefits.lr_sweep(make, split, [], steps=5)


def test_sweep_records_the_first_loss_and_each_layers_update_to_weight_ratio():
    split = tiny_split()
    make = lambda: models.mlp([8, 16, 3], "relu", norm="bn")  # noqa: E731
    sweep = benefits.lr_sweep(make, split, [0.1, 0.5], steps=6, seeds=(0, 1), batch_size=20,
                              record_at=[0, 1, 6])
    assert sweep.record_steps == [0, 1, 6]
    assert sweep.weight_norm.shape == sweep.update_ratio.shape == (2, 2, 3, 2)
    assert (sweep.update_ratio[:, :, 0] == 0).all()  # step 0: no update yet
    # member (rate 0.5, seed 1), stepped by hand: the same batches, plain SGD
    model = built(make, 1)
    start = [m.weight.norm().item() for m in model if isinstance(m, nn.Linear)]
    torch.testing.assert_close(sweep.weight_norm[1, 1, 0], torch.tensor(start, dtype=torch.float64))
    runs = train([model], split, 1, 0.5, seeds=[1], batch_size=20, progress=False)
    assert sweep.first_loss[1, 1].item() == pytest.approx(runs.step_loss[0, 0].item(), rel=1e-5)
    after = [m.weight.norm().item() for m in model if isinstance(m, nn.Linear)]
    torch.testing.assert_close(sweep.weight_norm[1, 1, 1], torch.tensor(after, dtype=torch.float64),
                               rtol=1e-5, atol=0)
    again = built(make, 1)
    step = [(a.weight - b.weight).norm().item() for a, b in zip(again, model, strict=True)
            if isinstance(a, nn.Linear)]
    expected = torch.tensor(step, dtype=torch.float64) / torch.tensor(after, dtype=torch.float64)
    torch.testing.assert_close(sweep.update_ratio[1, 1, 1], expected, rtol=1e-4, atol=0)
    assert sweep.reached(0.0).all() and not sweep.reached(1.1).any()
    with pytest.raises(ValueError, match="record_at"):
        benefits.lr_sweep(make, split, [0.1], steps=6, seeds=(0,), record_at=[7])


def test_scale_sweep_at_scale_one_is_the_plain_run_and_scales_the_weights():
    split = tiny_split()
    make = lambda: models.mlp([8, 16, 3], "relu")  # noqa: E731
    by_scale = benefits.scale_sweep(make, split, [1.0, 1e-3], lr=0.3, steps=30, seeds=(0,),
                                    batch_size=20)
    by_lr = benefits.lr_sweep(make, split, [0.3], steps=30, seeds=(0,), batch_size=20)
    assert torch.equal(by_scale.test_acc[0], by_lr.test_acc[0])
    assert by_scale.test_acc[1, 0] < by_scale.test_acc[0, 0]  # two tiny layers barely learn


def test_preactivations_are_the_inputs_of_the_nonlinearities():
    torch.manual_seed(0)
    model = models.mlp([8, 6, 5, 3], "sigmoid")
    x = torch.randn(30, 8)
    z = benefits.preactivations(model, x)
    assert len(z) == 2
    torch.testing.assert_close(z[0], model[0](x))
    torch.testing.assert_close(z[1], model[2](model[1](model[0](x))))
    with pytest.raises(ValueError, match="activation"):
        benefits.preactivations(nn.Linear(8, 3), x)
    with pytest.raises(TypeError, match="Module"):
        benefits.preactivations("model", x)


def test_preactivations_of_a_bn_net_use_batch_statistics_and_leave_running_ones():
    torch.manual_seed(0)
    model = models.mlp([8, 6, 3], "relu", norm="bn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    z = benefits.preactivations(model, torch.randn(50, 8) * 4 + 3)[0]
    assert z.mean(0).abs().max() < 1e-5 and (z.std(0, unbiased=False) - 1).abs().max() < 1e-3
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_layer_grad_norms_match_autograd_and_touch_nothing():
    torch.manual_seed(0)
    model = models.mlp([8, 6, 5, 3], "sigmoid", norm="bn")
    x, y = torch.randn(20, 8), torch.randint(0, 3, (20,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = benefits.layer_grad_norms(model, x, y)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())
    nn.functional.cross_entropy(model(x), y).backward()
    expected = [m.weight.grad.norm() for m in model.modules() if isinstance(m, nn.Linear)]
    torch.testing.assert_close(norms, torch.stack(expected))


def test_noisy_batch_norm_moves_mean_and_spread_every_step():
    torch.manual_seed(0)
    layer = benefits.NoisyBatchNorm1d(4, shift=2.0, max_scale=3.0)
    x = torch.randn(200, 4) * 5 + 1
    a, b = layer(x), layer(x)
    for out in (a, b):
        mean, std = out.mean(0), out.std(0, unbiased=False)
        assert (mean.abs() <= 2.0 + 1e-5).all() and ((std >= 1 - 1e-3) & (std <= 3 + 1e-3)).all()
    assert not torch.allclose(a, b)  # fresh noise at every call
    layer.eval()
    plain = bnn.BatchNorm1d(4)
    plain.load_state_dict(layer.state_dict())
    plain.eval()
    torch.testing.assert_close(layer(x), 2.0 * plain(x))  # E[s] = (1 + 3) / 2
    with pytest.raises(ValueError, match="max_scale"):
        benefits.NoisyBatchNorm1d(4, max_scale=0.5)
    model = benefits.noisy_mlp([8, 6, 5, 3], "relu", shift=0.5)
    noisy = [m for m in model if isinstance(m, benefits.NoisyBatchNorm1d)]
    assert len(noisy) == 2 and noisy[0].shift == 0.5


def test_gradient_step_probe_matches_a_manual_step_and_leaves_the_model():
    torch.manual_seed(0)
    model = models.mlp([8, 6, 3], "relu", norm="bn").double()
    x, y = torch.randn(30, 8, dtype=torch.float64), torch.randint(0, 3, (30,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, change, norm = benefits.gradient_step_probe(model, x, y, [0.1, 0.5])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())

    def loss_and_grad(m):
        probe = models.mlp([8, 6, 3], "relu", norm="bn").double()
        probe.load_state_dict(m)
        value = nn.functional.cross_entropy(probe(x), y)
        return value.item(), torch.autograd.grad(value, list(probe.parameters()))

    _, g = loss_and_grad(before)
    assert norm == pytest.approx(torch.sqrt(sum((gi**2).sum() for gi in g)).item())
    names = [n for n, _ in model.named_parameters()]
    for i, eta in enumerate([0.1, 0.5]):
        moved = dict(before)
        moved.update({n: before[n] - eta * gi for n, gi in zip(names, g, strict=True)})
        value, g2 = loss_and_grad(moved)
        assert loss[i].item() == pytest.approx(value, rel=1e-6)
        expected = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(g2, g, strict=True)))
        assert change[i].item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="positive step sizes"):
        benefits.gradient_step_probe(model, x, y, [0.1, -1.0])


def test_landscape_tracker_records_every_k_steps_and_computes_beta():
    torch.manual_seed(0)
    split = tiny_split()
    model = models.mlp([8, 6, 3], "relu")
    tracker = benefits.LandscapeTracker(split.x_train, split.y_train, [0.1, 0.4], every=3,
                                        batch_size=20)
    for step in range(1, 7):
        tracker(step, model)
    assert tracker.steps == [3, 6]
    assert tracker.loss.shape == tracker.grad_change.shape == (2, 2)
    expected = (tracker.grad_change / (torch.tensor([0.1, 0.4]) * tracker.grad_norm[:, None]))
    torch.testing.assert_close(tracker.beta, expected.amax(1))
    with pytest.raises(ValueError, match="batch_size"):
        benefits.LandscapeTracker(split.x_train, split.y_train, [0.1], batch_size=1)


def test_head_probe_measures_the_class_gap_and_the_output_layers_mean_input():
    torch.manual_seed(0)
    model = models.mlp([8, 6, 3], "sigmoid")
    x, y = torch.randn(40, 8), torch.tensor([0] * 20 + [1] * 15 + [2] * 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, gap, mean_sq = benefits.head_probe(model, x, y)
    assert loss == pytest.approx(nn.functional.cross_entropy(model(x), y).item(), rel=1e-6)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    a = model[1](model[0](x)).detach()
    assert mean_sq == pytest.approx((a.mean(0) ** 2).sum().item(), rel=1e-6)
    p = model(x).softmax(1).mean(0)
    assert gap == pytest.approx((p - torch.tensor([0.5, 0.375, 0.125])).abs().max().item(), rel=1e-6)
    # the claim of the docstring: with identical inputs, one SGD step moves every logit together,
    # 1 + ||a_bar||^2 times as far as the bias's share of the step
    head = nn.Linear(6, 3)
    same = a[:1].expand(10, 6)
    loss = nn.functional.cross_entropy(head(same), y[:10])
    gw, gb = torch.autograd.grad(loss, [head.weight, head.bias])
    moved = -(gw @ same[0] + gb)
    torch.testing.assert_close(moved, -gb * (1 + (same[0] ** 2).sum()))
    with pytest.raises(ValueError, match="labels"):
        benefits.head_probe(model, x, y[:5])


def test_preactivation_stats_average_each_layers_units():
    torch.manual_seed(0)
    model = models.mlp([8, 6, 5, 3], "sigmoid")
    x = torch.randn(30, 8) * 2 + 1
    stats = benefits.preactivation_stats(model, x)
    z = benefits.preactivations(model, x)
    assert set(stats) == {"spread", "offset", "offset_rms", "sigmoid_slope", "sigmoid_slope_rms",
                          "sigmoid_mean_sq"}
    assert stats["spread"].shape == (2,)
    torch.testing.assert_close(stats["spread"][1], z[1].std(0, unbiased=False).mean())
    torch.testing.assert_close(stats["offset"][0], z[0].mean(0).abs().mean())
    s = torch.sigmoid(z[0])
    torch.testing.assert_close(stats["sigmoid_slope"][0], (s * (1 - s)).mean())
    torch.testing.assert_close(stats["sigmoid_slope_rms"][0], (s * (1 - s)).pow(2).mean().sqrt())
    torch.testing.assert_close(stats["offset_rms"][1], z[1].mean(0).pow(2).mean().sqrt())
    torch.testing.assert_close(stats["sigmoid_mean_sq"][0], torch.sigmoid(z[0]).mean(0).pow(2).mean())
    assert (stats["sigmoid_slope"] <= 0.25).all()
    assert (stats["offset_rms"] >= stats["offset"]).all()  # rms >= mean of |.|


def test_first_steps_records_the_head_probe_for_the_first_steps_only():
    split = tiny_split()
    model = built(lambda: models.mlp([8, 6, 5, 3], "sigmoid"), 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = benefits.FirstSteps(model, model[-2], split.x_train, split.y_train, steps=3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    row0 = benefits.head_probe(model, split.x_train, split.y_train)
    z = model[:3](split.x_train).detach()  # the input of the last hidden sigmoid
    runs = train([model], split, 5, 0.5, seeds=[0], batch_size=20, progress=False,
                 on_step=each([first]))
    assert len(runs.step_loss[0]) == 5
    values = first.values
    assert values.shape == (4, 4)  # step 0 and the first 3 steps
    torch.testing.assert_close(values[0, :3], torch.tensor(row0, dtype=torch.float64))
    assert values[0, 3].item() == pytest.approx(z.median(0).values.median().item(), abs=1e-6)
    after3 = built(lambda: models.mlp([8, 6, 5, 3], "sigmoid"), 0)  # the same run, 3 steps
    train([after3], split, 3, 0.5, seeds=[0], batch_size=20, progress=False)
    torch.testing.assert_close(values[3, :3], torch.tensor(
        benefits.head_probe(after3, split.x_train, split.y_train), dtype=torch.float64),
        rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        benefits.FirstSteps(model, model[-2], split.x_train, split.y_train, steps=0)
    with pytest.raises(ValueError, match="submodule"):
        benefits.FirstSteps(model, nn.Sigmoid(), split.x_train, split.y_train)
    normed = built(lambda: models.mlp([8, 6, 5, 3], "sigmoid", norm="bn"), 0)
    before = {k: v.clone() for k, v in normed.state_dict().items()}
    benefits.FirstSteps(normed.eval(), normed[-2], split.x_train, split.y_train)
    assert all(torch.equal(v, normed.state_dict()[k]) for k, v in before.items())
    assert not any(m.training for m in normed.modules())  # its mode is left as it was
