"""bncourse.inference: momentum conventions, EMA weights, exact population statistics, batch noise."""

import copy
import math

import pytest
import torch
from torch import nn

import bncourse as bn
from bncourse.lab import inference as inf

# --- momentum conventions ----------------------------------------------------------------------


@pytest.mark.parametrize(("convention", "value", "torch_value"),
                         [("pytorch", 0.1, 0.1), ("keras", 0.99, 0.01), ("cs231n", 0.9, 0.1)])
def test_momentum_conversion_round_trips(convention, value, torch_value):
    assert inf.to_torch_momentum(value, convention) == pytest.approx(torch_value)
    assert inf.from_torch_momentum(torch_value, convention) == pytest.approx(value)
    assert inf.MOMENTUM_CONVENTIONS[convention].default == value


@pytest.mark.parametrize("convention", ["keras", "cs231n"])
def test_converted_momentum_gives_torch_running_mean(convention):
    """The framework's own update rule, with its momentum, matches torch's layer with the converted one."""
    gen = torch.Generator().manual_seed(0)
    value = inf.MOMENTUM_CONVENTIONS[convention].default
    layer = nn.BatchNorm1d(3, momentum=inf.to_torch_momentum(value, convention))
    running = torch.zeros(3, dtype=torch.float64)
    for _ in range(5):
        x = torch.randn(8, 3, generator=gen)
        layer(x)
        running = inf.ema_update(running, x.double().mean(0), value, convention)
    torch.testing.assert_close(layer.running_mean.double(), running, rtol=1e-5, atol=1e-6)
    assert "momentum * running" in inf.MOMENTUM_CONVENTIONS[convention].update


def test_conventions_reject_bad_input():
    with pytest.raises(ValueError, match="convention must be one of"):
        inf.to_torch_momentum(0.1, "caffe")
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\]"):
        inf.to_torch_momentum(1.5, "keras")
    with pytest.raises(ValueError, match="momentum must be"):
        inf.from_torch_momentum(None, "pytorch")


# --- weights of past batches --------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("layer_cls", [bn.nn.BatchNorm1d, nn.BatchNorm1d])
def test_ema_weights_reproduce_the_running_mean(momentum, layer_cls):
    gen = torch.Generator().manual_seed(1)
    n = 12
    layer = layer_cls(2, momentum=momentum)
    init = torch.tensor([0.5, -1.0])
    layer.running_mean.copy_(init)
    means = []
    for _ in range(n):
        x = torch.randn(6, 2, generator=gen) * 2 + 1
        means.append(x.double().mean(0))
        layer(x)
    weights, initial = inf.ema_weights(momentum, n)
    assert weights.sum().item() + initial == pytest.approx(1.0)
    expected = initial * init.double() + (weights.unsqueeze(1) * torch.stack(means)).sum(0)
    torch.testing.assert_close(layer.running_mean.double(), expected, rtol=1e-5, atol=1e-6)


def test_ema_weights_newest_weighs_most():
    weights, initial = inf.ema_weights(0.1, 5)
    assert weights[-1].item() == pytest.approx(0.1)
    assert torch.all(weights[1:] > weights[:-1])
    assert initial == pytest.approx(0.9**5)
    with pytest.raises(ValueError, match="num_batches must be a positive int"):
        inf.ema_weights(0.1, 0)


@pytest.mark.parametrize("momentum", [0.5, 0.1, 0.01])
def test_effective_window_matches_variance_and_mean_age(momentum):
    weights, _ = inf.ema_weights(momentum, 20_000)  # long enough that the initial value is gone
    window = inf.effective_window(momentum)
    assert 1 / weights.square().sum().item() == pytest.approx(window, rel=1e-6)
    age = torch.arange(len(weights) - 1, -1, -1, dtype=torch.float64)
    mean_age = (weights * age).sum().item()
    assert mean_age == pytest.approx((window - 1) / 2, rel=1e-6)  # mean age of a uniform window


def test_effective_window_values_and_errors():
    assert inf.effective_window(0.1) == pytest.approx(19.0)
    with pytest.raises(ValueError, match="infinite"):
        inf.effective_window(0.0)


# --- population statistics ----------------------------------------------------------------------


def test_population_stats_of_unequal_chunks_equals_the_whole():
    gen = torch.Generator().manual_seed(2)
    chunks = [torch.randn(n, 3, generator=gen, dtype=torch.float64) + i for i, n in enumerate((4, 17, 2, 9))]
    mean, var = inf.population_stats(chunks)
    every = torch.cat(chunks)
    torch.testing.assert_close(mean, every.mean(0))
    torch.testing.assert_close(var, every.var(0))


def test_population_stats_is_accurate_far_from_zero_in_float32():
    gen = torch.Generator().manual_seed(3)
    chunks = [(1e4 + torch.randn(64, 4, generator=gen, dtype=torch.float64)).float() for _ in range(8)]
    mean, var = inf.population_stats(chunks)
    every = torch.cat(chunks).double()
    assert bn.rel_error(var, every.var(0)) < 1e-5
    assert bn.rel_error(mean, every.mean(0)) < 1e-6


def test_population_stats_reduces_every_dim_but_channels():
    gen = torch.Generator().manual_seed(4)
    chunks = [torch.randn(n, 3, 5, generator=gen, dtype=torch.float64) for n in (2, 3)]
    mean, var = inf.population_stats(chunks)
    every = torch.cat(chunks)
    torch.testing.assert_close(mean, every.mean((0, 2)))
    torch.testing.assert_close(var, every.var((0, 2)))


def test_population_stats_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 values"):
        inf.population_stats([torch.ones(1, 3)])
    with pytest.raises(ValueError, match="at least 2 values"):
        inf.population_stats([])
    with pytest.raises(TypeError, match="floating-point"):
        inf.population_stats([torch.ones(4, 3, dtype=torch.long)])
    with pytest.raises(ValueError, match="channels"):
        inf.population_stats([torch.ones(4, 3), torch.ones(4, 2)])


def _trained_like(norm="bn", seed=0):
    """An MLP whose weights and running buffers are far from their initial values."""
    torch.manual_seed(seed)
    model = bn.models.mlp([5, 6, 4, 3], norm=norm).double()
    model.train()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        model(torch.randn(10, 5, generator=gen, dtype=torch.float64) * 3 + 2)
    return model


@pytest.mark.parametrize("norm", ["bn", "torch_bn"])
def test_recompute_bn_stats_sets_the_eval_time_input_statistics(norm):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(50, 5, generator=gen, dtype=torch.float64) * 2 + 1
    model = _trained_like(norm)
    inf.recompute_bn_stats(model, x, batch_size=7)
    assert model.training  # mode restored
    first, second = inf.bn_layers(model)
    z1 = model[0](x)
    torch.testing.assert_close(first.running_mean, z1.mean(0))
    torch.testing.assert_close(first.running_var, z1.var(0))
    model.eval()
    with torch.no_grad():
        z2 = model[3](model[2](model[1](z1)))  # layer 2's input, layer 1 in eval mode
    torch.testing.assert_close(second.running_mean, z2.mean(0))
    torch.testing.assert_close(second.running_var, z2.var(0))


def test_recompute_bn_stats_does_not_depend_on_the_chunk_size():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    a = inf.recompute_bn_stats(_trained_like(), x, batch_size=3)
    b = inf.recompute_bn_stats(_trained_like(), x, batch_size=1000)
    for la, lb in zip(inf.bn_layers(a), inf.bn_layers(b), strict=True):
        torch.testing.assert_close(la.running_mean, lb.running_mean)
        torch.testing.assert_close(la.running_var, lb.running_var)


class _Reversed(nn.Module):
    """Two BN layers registered in one order and called in the other."""

    def __init__(self):
        super().__init__()
        self.late = bn.nn.BatchNorm1d(3)
        self.early = bn.nn.BatchNorm1d(3)
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.late(self.lin(self.early(x)))


def test_recompute_bn_stats_follows_the_call_order():
    torch.manual_seed(7)
    model = _Reversed().double()
    x = torch.randn(30, 3, dtype=torch.float64) * 4 + 3
    inf.recompute_bn_stats(model, x)
    model.eval()
    with torch.no_grad():
        z = model.lin(model.early(x))  # uses early's new statistics
    torch.testing.assert_close(model.late.running_mean, z.mean(0))
    torch.testing.assert_close(model.late.running_var, z.var(0))


def test_recompute_bn_stats_on_conv_layers():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1),
                          bn.nn.BatchNorm2d(2)).double()
    x = torch.randn(9, 2, 6, 6, dtype=torch.float64)
    inf.recompute_bn_stats(model, x, batch_size=4)
    z = model[0](x)
    torch.testing.assert_close(model[1].running_mean, z.mean((0, 2, 3)))
    torch.testing.assert_close(model[1].running_var, z.var((0, 2, 3)))


def test_recompute_bn_stats_rejects_bad_input():
    with pytest.raises(ValueError, match="no batch norm layer"):
        inf.recompute_bn_stats(nn.Linear(3, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        inf.recompute_bn_stats(nn.BatchNorm1d(3, track_running_stats=False), torch.randn(4, 3))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        inf.recompute_bn_stats(nn.BatchNorm1d(3), torch.randn(4, 3), batch_size=0)
    with pytest.raises(ValueError, match="never calls"):
        inf.recompute_bn_stats(_Unused(), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"at least 2 examples, got dtype torch.int64"):
        inf.recompute_bn_stats(nn.BatchNorm1d(3), torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        inf.bn_layers("model")


class _Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.BatchNorm1d(3), nn.BatchNorm1d(3)

    def forward(self, x):
        return self.used(x)


# --- predicting with batch or running statistics ------------------------------------------------


def test_batch_statistics_normalizes_per_batch_and_restores_everything():
    model = _trained_like()
    model.eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    with inf.batch_statistics(model), torch.no_grad():
        inside = model(x)
    train_mode = copy.deepcopy(model).train()
    torch.testing.assert_close(inside, train_mode(x))
    assert not any(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_predict_batch_stats_of_one_batch_equals_train_mode_and_keeps_order():
    model = _trained_like()
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    out = inf.predict(model, x, "batch", batch_size=12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, copy.deepcopy(model).train()(x))
    assert model.training
    torch.testing.assert_close(inf.predict(model, x), copy.deepcopy(model).eval()(x))


def test_predict_batch_stats_depends_on_the_company():
    model = _trained_like()
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    a = inf.predict(model, x, "batch", 4, torch.Generator().manual_seed(0))
    b = inf.predict(model, x, "batch", 4, torch.Generator().manual_seed(1))
    assert not torch.allclose(a, b)


def test_predict_running_stats_in_batches_does_not_depend_on_the_company():
    model = _trained_like()
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    whole = inf.predict(model, x)
    for seed in (0, 1):
        batched = inf.predict(model, x, "running", 4, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(batched, whole)
    assert model.training


def test_accuracy_and_predict_reject_bad_input():
    model, x, y = _trained_like(), torch.randn(10, 5, dtype=torch.float64), torch.zeros(10, dtype=torch.long)
    assert 0.0 <= inf.accuracy(model, x, y) <= 1.0
    with pytest.raises(ValueError, match="stats must be"):
        inf.predict(model, x, "exact")
    with pytest.raises(ValueError, match="needs a batch_size"):
        inf.predict(model, x, "batch")
    with pytest.raises(ValueError, match=r"batch_size must be an int in \[2, 10\]"):
        inf.predict(model, x, "batch", 1)


# --- many networks at once --------------------------------------------------------------------


def _many(norm="bn", count=3):
    return [_trained_like(norm, seed) for seed in range(count)]


@pytest.mark.parametrize("stats", ["batch", "running"])
@pytest.mark.parametrize("norm", ["bn", "torch_bn", "layer"])
def test_predict_many_in_batches_equals_predicting_each_in_turn(stats, norm):
    """Network i gets the i-th shuffle of one generator, as predicting them one by one does."""
    models = _many(norm)
    before = [copy.deepcopy(m.state_dict()) for m in models]
    x = torch.randn(23, 5, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    many = inf.predict(models, x, stats, 4, torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(2)
    one_by_one = torch.stack([inf.predict(m, x, stats, 4, gen) for m in models])
    assert many.shape == (3, 23, 3)
    torch.testing.assert_close(many, one_by_one, rtol=1e-12, atol=1e-12)
    for m, state in zip(models, before, strict=True):  # the networks are left as they were
        assert m.training
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


def test_predict_and_accuracy_of_many_without_batches():
    models, x = _many(), torch.randn(9, 5, dtype=torch.float64)
    y = torch.arange(9) % 3
    torch.testing.assert_close(inf.predict(models, x), torch.stack([inf.predict(m, x) for m in models]))
    acc = inf.accuracy(models, x, y)
    assert acc.dtype == torch.float64 and acc.shape == (3,)
    assert acc.tolist() == pytest.approx([inf.accuracy(m, x, y) for m in models])
    gen = torch.Generator().manual_seed(4)
    acc = inf.accuracy(models, x, y, "batch", 3, gen)
    gen = torch.Generator().manual_seed(4)
    assert acc.tolist() == pytest.approx([inf.accuracy(m, x, y, "batch", 3, gen) for m in models])


def test_recompute_bn_stats_of_many_equals_each():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    many = inf.recompute_bn_stats(_many(), x)
    for got, want in zip(many, [inf.recompute_bn_stats(m, x) for m in _many()], strict=True):
        for key, value in want.state_dict().items():
            torch.testing.assert_close(got.state_dict()[key], value)


def test_predicting_many_members_during_training_changes_nothing():
    """In a probe, the trainer's members are views into its wide network: predicting them in
    batches (copies, stacked) must leave the training exactly as it is without the probe."""
    x = torch.rand(60, 5, generator=torch.Generator().manual_seed(13))
    data = bn.data.Split(x, (x.sum(1) > 2.5).long(), x[:10], (x[:10].sum(1) > 2.5).long())
    seen = []

    def probe(step, models, batch):
        seen.append(inf.accuracy(models, data.x_test, data.y_test, "batch", 5, torch.Generator()))
        inf.recompute_bn_stats(copy.deepcopy(models), data.x_train)

    def build():
        return bn.models.mlp([5, 8, 2], norm="bn")

    probed = bn.train(build, data, 6, 0.3, seeds=[0, 1], batch_size=10, on_step=probe, progress=False)
    plain = bn.train(build, data, 6, 0.3, seeds=[0, 1], batch_size=10, progress=False)
    assert len(seen) == 6 and seen[0].shape == (2,)
    for a, b in zip(probed.models, plain.models, strict=True):
        for key, value in b.state_dict().items():
            assert torch.equal(a.state_dict()[key], value), key


def test_many_rejects_bad_input():
    with pytest.raises(TypeError, match="non-empty list of models"):
        inf.predict([], torch.randn(4, 5))
    with pytest.raises(TypeError, match="non-empty list of models"):
        inf.accuracy([_trained_like(), "model"], torch.randn(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="expected a model or a list of models, got str"):
        inf.predict("model", torch.randn(4, 5))


# --- porting to Keras' convention and back --------------------------------------------------------


@pytest.mark.parametrize("norm", ["bn", "torch_bn"])
def test_port_to_keras_and_back_keeps_the_eval_outputs(norm):
    layer = _trained_like(norm)[1].float()
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(3)) * 2 + 1
    keras = inf.torch_to_keras(layer.eval())
    back = inf.keras_to_torch(keras)
    assert not keras.training and not back.training
    assert keras.epsilon == layer.eps and keras.momentum == pytest.approx(1 - layer.momentum)
    torch.testing.assert_close(keras.moving_variance, layer.running_var)  # copied as it is
    with torch.no_grad():
        torch.testing.assert_close(keras(x), layer(x))
        torch.testing.assert_close(back(x), layer(x))
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(back, name), getattr(layer, name))
    assert back.eps == layer.eps and back.momentum == pytest.approx(layer.momentum)


def test_keras_style_layer_trains_with_keras_convention():
    """Training mode: batch statistics, moving averages weighted the Keras way, biased variance."""
    gen = torch.Generator().manual_seed(4)
    keras = inf.KerasStyleBatchNorm(3, momentum=0.9, epsilon=1e-5)
    ours = bn.nn.BatchNorm1d(3, momentum=0.1)
    for _ in range(5):
        x = torch.randn(8, 3, generator=gen) * 3 + 1
        torch.testing.assert_close(keras(x), ours(x))
    torch.testing.assert_close(keras.moving_mean, ours.running_mean)
    # after the first update both hold 0.9 * 1 plus the batch terms; their batch terms differ by 7/8
    torch.testing.assert_close(keras.moving_variance - 0.9**5, (ours.running_var - 0.9**5) * 7 / 8)
    gamma, beta, mean, var = keras.get_weights()
    assert torch.equal(mean, keras.moving_mean) and mean is not keras.moving_mean


def test_porting_rejects_bad_input():
    with pytest.raises(ValueError, match="running statistics"):
        inf.torch_to_keras(bn.nn.BatchNorm1d(3, track_running_stats=False))
    with pytest.raises(ValueError, match="cumulative"):
        inf.torch_to_keras(bn.nn.BatchNorm1d(3, momentum=None))
    with pytest.raises(TypeError, match="KerasStyleBatchNorm"):
        inf.keras_to_torch(bn.nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="4 weights"):
        inf.KerasStyleBatchNorm(3).set_weights([torch.ones(3)])
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        inf.KerasStyleBatchNorm(3)(torch.ones(4, 2))


# --- noise of the batch statistics --------------------------------------------------------------


@pytest.mark.parametrize("replace", [True, False])
def test_batch_mean_noise_follows_theory(replace):
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(2000, 8, generator=gen) * 3 + 5
    sizes = [2, 8, 32, 128]
    result = inf.batch_stat_noise(x, sizes, trials=600, generator=gen, replace=replace)
    theory = torch.tensor([inf.mean_noise_theory(m, None if replace else 2000) for m in sizes])
    assert bn.rel_error(result.mean_std.double(), theory) < 0.08
    # Gaussian data: the biased batch variance has std sqrt(2 (m - 1)) / m in units of sigma^2
    gauss = torch.tensor([math.sqrt(2 * (m - 1)) / m for m in sizes], dtype=torch.float64)
    assert bn.rel_error(result.var_std.double(), gauss) < 0.1
    assert result.batch_sizes == sizes


def test_batch_stat_noise_rejects_bad_input():
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        inf.batch_stat_noise(torch.randn(10), [2])
    with pytest.raises(ValueError, match="batch sizes must be ints"):
        inf.batch_stat_noise(torch.randn(10, 2), [1, 4])
    with pytest.raises(ValueError, match="constant"):
        inf.batch_stat_noise(torch.ones(10, 2), [2])


def test_mean_noise_theory_and_power_law_slope():
    assert inf.mean_noise_theory(4) == pytest.approx(0.5)
    assert inf.mean_noise_theory(10, 10) == 0.0
    assert inf.mean_noise_theory(1, 10) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="batch_size <= population"):
        inf.mean_noise_theory(11, 10)
    xs = [1, 2, 4, 8, 16]
    slope, intercept = inf.power_law_slope(xs, [3 * v**-0.5 for v in xs])
    assert slope == pytest.approx(-0.5)
    assert intercept == pytest.approx(math.log(3))
    with pytest.raises(ValueError, match="same length"):
        inf.power_law_slope([1, 2], [1])


# --- many networks at once ------------------------------------------------------------------------
