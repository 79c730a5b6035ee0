"""Chapter 5, part 3: injected drift, jitter and drift measured, Santurkar et al.'s gradient shift."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from bncourse import nn as bnn
from bncourse.lab import benefits, models, shift
from bncourse.lab.data import Split
from bncourse.lab.trainer import ProbeBatches, each, train


def layer_noise(layer: shift.DriftingBatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's current (m, s), read off its training-mode output at gamma = 1, beta = 0."""
    x = torch.randn(50, layer.num_features, dtype=torch.float64)
    with torch.no_grad():
        out = layer.double()(x)
    x_hat = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + layer.eps)
    s = (out * x_hat).mean(0) / (x_hat**2).mean(0)
    return out.mean(0), s


def test_drift_glides_between_uniform_targets_along_half_a_cosine():
    torch.manual_seed(0)
    layer = shift.DriftingBatchNorm1d(400, shift=2.0, max_scale=3.0, period=10)
    path = [layer.noise(t) for t in range(31)]
    m = torch.stack([p[0] for p in path])  # (steps, units)
    s = torch.stack([p[1] for p in path])
    # at the knots: fresh draws from U(-2, 2) and U(1, 3)
    knots_m, knots_s = m[::10], s[::10]
    assert knots_m.abs().max() <= 2 and 1 <= knots_s.min() and knots_s.max() <= 3
    assert abs(knots_m.mean()) < 0.15 and abs(knots_m.std() - 4 / math.sqrt(12)) < 0.1
    assert abs(knots_s.mean() - 2) < 0.1
    # in between, the float64 cosine interpolation of the two targets
    for t in (3, 5, 17):
        k, f = divmod(t, 10)
        w = (1 - math.cos(math.pi * f / 10)) / 2
        torch.testing.assert_close(m[t], (1 - w) * m[10 * k] + w * m[10 * k + 10], rtol=0, atol=1e-12)
    # smooth: no step moves a unit's shift by more than the half-cosine's steepest slope allows
    assert (m[1:] - m[:-1]).abs().max() <= 4 * math.pi / (2 * 10) + 1e-12


def test_drift_moves_once_per_training_forward_and_eval_applies_the_current_noise():
    torch.manual_seed(1)
    layer = shift.DriftingBatchNorm1d(6, period=5)
    x = torch.randn(20, 6)
    layer(x)  # a training step: the noise of step 0, then the clock moves
    assert int(layer.noise_step) == 1
    m1, s1 = layer_noise(layer)  # no_grad: does not move it
    assert int(layer.noise_step) == 1
    torch.testing.assert_close(m1, layer.noise(1)[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(s1, layer.noise(1)[1], rtol=0, atol=1e-9)
    layer.eval()
    out = layer(x.double())
    assert int(layer.noise_step) == 1
    m, s = layer.noise()
    torch.testing.assert_close(out, s * (x.double() - layer.running_mean.double())
                               / torch.sqrt(layer.running_var.double() + layer.eps) + m)


def test_period_one_redraws_every_step_and_seeds_reproduce():
    torch.manual_seed(2)
    a = shift.DriftingBatchNorm1d(300, period=1)
    torch.manual_seed(2)
    b = shift.DriftingBatchNorm1d(300, period=1)
    assert torch.equal(a.noise(7)[0], b.noise(7)[0])
    m0, m1 = a.noise(0)[0], a.noise(1)[0]
    assert torch.corrcoef(torch.stack([m0, m1]))[0, 1].abs() < 0.2  # independent draws
    c = shift.DriftingBatchNorm1d(300, period=1)
    assert not torch.equal(c.noise(0)[0], m0)  # each layer draws its own noise


def test_drifting_mlp_replaces_every_batch_norm():
    model = shift.drifting_mlp([8, 5, 5, 3], "relu", shift=1.0, max_scale=2.0, period=20)
    layers = [m for m in model if isinstance(m, bnn.BatchNorm1d)]
    assert len(layers) == 2 and all(isinstance(m, shift.DriftingBatchNorm1d) for m in layers)
    assert all(m.period == 20 and m.shift == 1.0 for m in layers)
    assert "period=20" in repr(model)
    with pytest.raises(ValueError, match="period"):
        shift.DriftingBatchNorm1d(4, period=0)
    with pytest.raises(ValueError, match="max_scale"):
        shift.DriftingBatchNorm1d(4, max_scale=0.5)


def test_unit_uniform_is_a_uniform_stream_per_key_and_counter():
    keys = torch.randint(2**31, (20000,), generator=torch.Generator().manual_seed(0))
    u = benefits.unit_uniform(keys, 7)
    assert u.shape == keys.shape and u.dtype == torch.float64 and 0 < u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.003
    assert torch.equal(u, benefits.unit_uniform(keys.clone(), 7))  # a function, no state
    many = benefits.unit_uniform(keys, [7, 8, 2**32 - 1])
    assert many.shape == (3, 20000) and torch.equal(many[0], u)
    for v in (many[1], many[2], benefits.unit_uniform(keys + 1, 7)):
        assert torch.corrcoef(torch.stack([u, v]))[0, 1].abs() < 0.03  # another counter or key
    # one key over many counters: uniform and uncorrelated from one counter to the next
    steps = benefits.unit_uniform(keys[:1], range(20000)).flatten()
    assert abs(steps.mean() - 0.5) < 0.01 and abs(steps.var() - 1 / 12) < 0.003
    assert torch.corrcoef(torch.stack([steps[1:], steps[:-1]]))[0, 1].abs() < 0.03
    with pytest.raises(ValueError, match="counters"):
        benefits.unit_uniform(keys, -1)


def test_the_noise_lives_in_buffers_out_of_the_state_dict():
    for layer in (benefits.NoisyBatchNorm1d(5), shift.DriftingBatchNorm1d(5, period=3)):
        assert set(layer.state_dict()) == set(bnn.BatchNorm1d(5).state_dict())
        assert {"noise_key", "noise_step"} <= {n for n, _ in layer.named_buffers()}
        layer.double()
        assert layer.noise_key.dtype == torch.long and layer.noise_step.dtype == torch.long


@pytest.mark.parametrize("make", [
    lambda: benefits.noisy_mlp([8, 6, 6, 3], "relu", shift=2.0, max_scale=3.0),
    lambda: shift.drifting_mlp([8, 6, 6, 3], "relu", period=4),
], ids=["jitter", "drift"])
def test_noisy_members_train_stacked_as_alone_and_a_probe_sees_its_own_noise(make):
    """Trained side by side as one wide network, each member gets the noise a run of its seed
    alone gets, step by step; a probe of one member sees that member's current noise."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(160, 8, generator=gen)
    data = Split(x[:100], x[:100, :3].argmax(1), x[100:], x[100:, :3].argmax(1))

    def noise_probe(seen):
        def probe(step, model, batch):
            layer = next(m for m in model if isinstance(m, benefits.NoisyBatchNorm1d))
            seen.append((int(layer.noise_step), torch.cat(layer.noise())))
        return probe

    seeds = [3, 4, 5]
    seen = [[] for _ in seeds]
    together = train(make, data, 12, 0.2, seeds=seeds, batch_size=20, eval_every=4, progress=False,
                     on_step=each([noise_probe(s) for s in seen]))
    for i, seed in enumerate(seeds):
        alone_seen = []
        alone = train(make, data, 12, 0.2, seeds=[seed], batch_size=20, eval_every=4, progress=False,
                      on_step=each([noise_probe(alone_seen)]))
        torch.testing.assert_close(together.step_loss[i], alone.step_loss[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(together.test_acc[i], alone.test_acc[0])
        assert [t for t, _ in seen[i]] == list(range(1, 13))  # the clock: one per step
        for (_, a), (_, b) in zip(seen[i], alone_seen, strict=True):
            assert torch.equal(a, b)
    assert not torch.equal(seen[0][0][1], seen[1][0][1])  # each member its own noise
    # after training every member owns its buffers, the clock included
    clocks = [m.noise_step for model in together.models for m in model
              if isinstance(m, benefits.NoisyBatchNorm1d)]
    assert len({c.data_ptr() for c in clocks}) == len(clocks) and all(int(c) == 12 for c in clocks)


def test_jitter_and_drift_separate_a_trend_from_white_noise():
    gen = torch.Generator().manual_seed(0)
    steps = torch.arange(200, dtype=torch.float64)[:, None]
    slope = torch.linspace(-0.02, 0.02, 500, dtype=torch.float64)[None, :]
    trend = slope * steps
    # a straight trend alone: no jitter, and its exact move over 40 records
    jitter, drift = shift.jitter_and_drift(trend, 40)
    assert jitter < 1e-12
    assert math.isclose(drift, 40 * slope.pow(2).mean().sqrt().item(), rel_tol=1e-12)
    # white noise alone: jitter is its std, and no drift beyond the estimate's error
    noise = 0.3 * torch.randn(200, 500, generator=gen, dtype=torch.float64)
    jitter, drift = shift.jitter_and_drift(noise, 40)
    assert abs(jitter / 0.3 - 1) < 0.02 and drift < 0.05
    # both: each is recovered
    jitter, drift = shift.jitter_and_drift(trend + noise, 40)
    assert abs(jitter / 0.3 - 1) < 0.02
    assert abs(drift / (40 * slope.pow(2).mean().sqrt().item()) - 1) < 0.05
    with pytest.raises(ValueError, match="lag"):
        shift.jitter_and_drift(noise, 200)


def deep_model(norm=None) -> nn.Sequential:
    torch.manual_seed(3)
    return models.mlp([6, 5, 4, 4, 3], activation="tanh", norm=norm).double()


def reference_shift(model: nn.Sequential, x, y, lr):
    """Definition 2.1 written out layer by layer: plain autograd on a copy of the model."""
    linears = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    results = []
    for li in linears[1:]:
        net = copy.deepcopy(model).train()
        params = list(net.parameters())
        grads = dict(zip(params, torch.autograd.grad(nn.functional.cross_entropy(net(x), y), params),
                         strict=True))
        target = net[li].weight
        with torch.no_grad():
            for m in list(net)[:li]:  # the layers before it take their SGD step
                for p in m.parameters():
                    p -= lr * grads[p]
        g, g2 = grads[target], torch.autograd.grad(nn.functional.cross_entropy(net(x), y), target)[0]
        results.append(((g - g2).norm(), (g * g2).sum() / (g.norm() * g2.norm()), g.norm()))
    return [torch.stack(t) for t in zip(*results, strict=True)]


@pytest.mark.parametrize("norm", [None, "bn"])
def test_gradient_shift_matches_definition_2_1_in_float64(norm):
    model = deep_model(norm)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(3, (16,), generator=gen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    l2, cos, norm_ = shift.gradient_shift(model, x, y, lr=0.5)
    ref = reference_shift(model, x, y, 0.5)
    for got, want in zip((l2, cos, norm_), ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert l2.shape == (3,) and (cos < 1).all() and (l2 > 0).all()
    for k, v in model.state_dict().items():  # parameters and running statistics untouched
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_gradient_shift_for_a_small_step_is_the_hessian_block_times_the_step():
    """||G - G'|| -> ||d G_i / d theta_<i . (lr g_<i)|| as lr -> 0 (a finite-difference check)."""
    model = deep_model()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(3, (16,), generator=gen)
    theta = {n: p.detach() for n, p in model.named_parameters()}
    names = list(theta)
    i = names.index("4.weight")  # the third Linear: two weights and two biases come before it

    def loss_of(params):
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    def grad_i(*earlier):
        base = {**theta, **dict(zip(names[:i], earlier, strict=True))}
        return torch.func.grad(lambda w: loss_of({**base, names[i]: w}))(theta[names[i]])

    lr = 1e-6
    g = torch.func.grad(loss_of)(theta)
    _, change = torch.func.jvp(grad_i, tuple(theta[n] for n in names[:i]),
                               tuple(-lr * g[n] for n in names[:i]))
    l2 = shift.gradient_shift(model, x, y, lr=lr)[0][1]
    assert math.isclose(l2.item(), change.norm().item(), rel_tol=1e-4)


def test_gradient_shift_holds_injected_noise_fixed_and_restores_the_model():
    x, y = torch.randn(10, 6), torch.randint(3, (10,))
    for noisy in (benefits.noisy_mlp([6, 5, 4, 3], "relu", shift=2.0, max_scale=3.0),
                  shift.drifting_mlp([6, 5, 4, 3], "relu", period=2)):
        noisy.eval()
        state = torch.get_rng_state()
        l2, cos, _ = shift.gradient_shift(noisy, x, y, lr=1e-9)
        assert (l2 < 1e-6).all() and (cos > 1 - 1e-6).all()  # no step, no change: same noise
        assert torch.equal(torch.get_rng_state(), state)  # the training's random stream untouched
        assert not noisy.training
        assert all(int(m.noise_step) == 0 for m in noisy if isinstance(m, benefits.NoisyBatchNorm1d))


def test_gradient_shift_checks_its_input():
    model = models.mlp([6, 5, 4, 3])
    x, y = torch.randn(10, 6), torch.randint(3, (10,))
    with pytest.raises(ValueError, match="two nn.Linear"):
        shift.gradient_shift(nn.Sequential(nn.Linear(6, 3)), x, y, lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        shift.gradient_shift(model, x, y, lr=0.0)
    with pytest.raises(TypeError, match="Module"):
        shift.gradient_shift(lambda t: t, x, y, lr=0.1)


def test_trackers_record_during_training():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(120, 8, generator=gen)
    y = x[:, :3].argmax(1)
    data = Split(x[:60], y[:60], x[60:], y[60:])
    torch.manual_seed(0)
    model = models.mlp([8, 6, 6, 3], norm="bn")
    calls = []
    probes = shift.Probes(
        gradients=shift.GradientShiftTracker(data.x_train, data.y_train, 0.1, every=5,
                                             batch_size=20),
        count=lambda step, m, batch: calls.append(step))
    train([model], data, 20, 0.1, batch_size=20, progress=False, on_step=each([probes]))
    tracker = probes["gradients"]
    assert tracker.steps == [5, 10, 15, 20] and calls == list(range(1, 21))
    assert tracker.l2.shape == tracker.cos.shape == tracker.norm.shape == (4, 2)
    assert ((tracker.cos <= 1 + 1e-6) & (tracker.cos >= -1 - 1e-6)).all()
    with pytest.raises(ValueError, match="batch_size"):
        shift.GradientShiftTracker(data.x_train, data.y_train, 0.1, batch_size=500)
    with pytest.raises(RuntimeError, match="nothing recorded"):
        _ = shift.GradientShiftTracker(data.x_train, data.y_train, 0.1).cos


def test_landscape_tracker_records_the_loss_before_the_step_one_per_member():
    """The landscape probe of chapter 5 (bncourse.lab.benefits), one per member through each():
    ``start_loss`` is the member's loss at its own parameters and noise, on the probe's batch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(120, 8, generator=gen)
    data = Split(x[:80], x[:80, :3].argmax(1), x[80:], x[80:, :3].argmax(1))
    trackers = [benefits.LandscapeTracker(data.x_train, data.y_train, [0.05, 0.2], every=4,
                                          batch_size=20, seed=s) for s in (0, 1)]
    runs = train(lambda: benefits.noisy_mlp([8, 6, 6, 3], "relu"), data, 8, 0.1, seeds=[0, 1],
                 batch_size=20, progress=False, on_step=each(trackers))
    for t in trackers:
        assert t.steps == [4, 8] and t.start_loss.shape == (2,) and t.loss.shape == (2, 2)
        assert torch.isfinite(t.beta).all()
    # the last record, by hand: the trained member is the network of step 8, noise included
    batches = ProbeBatches(data.x_train, data.y_train, 4, 20, seed=1)
    batches.at(4)
    bx, by = batches.at(8)
    member = copy.deepcopy(runs.models[1]).train()
    with torch.no_grad():  # batch statistics, the current noise, the clock left as it is
        loss = nn.functional.cross_entropy(member(bx), by).item()
    assert trackers[1].start_loss[1].item() == pytest.approx(loss, rel=1e-6)
