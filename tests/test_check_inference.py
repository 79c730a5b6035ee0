"""The Chapter 4 exercise checks: right answers pass, the typical wrong answers get their own message."""

import pytest
import torch
import torch.nn.functional as torch_F

import bncourse as bn
from bncourse.teach.check import CheckFailed


def not_done(*args):
    raise NotImplementedError


# --- population_stats ---------------------------------------------------------------------------


def stats_right(chunks):
    return bn.inference.population_stats(chunks)


def stats_concat(chunks):  # simple and right
    x = torch.cat(chunks)
    return x.mean(0), x.var(0)


def stats_mean_of_means(chunks):
    x = torch.cat(chunks)
    return torch.stack([c.mean(0) for c in chunks]).mean(0), x.var(0)


def stats_biased(chunks):
    x = torch.cat(chunks)
    return x.mean(0), x.var(0, unbiased=False)


def stats_within_only(chunks):
    n = sum(len(c) for c in chunks)
    x = torch.cat(chunks)
    return x.mean(0), sum(len(c) * c.var(0, unbiased=False) for c in chunks) / n


def stats_mean_of_unbiased(chunks):
    return torch.cat(chunks).mean(0), torch.stack([c.var(0) for c in chunks]).mean(0)


def stats_one_pass(chunks):
    n, s, s2 = 0, 0.0, 0.0
    for c in chunks:
        n += len(c)
        s = s + c.sum(0)
        s2 = s2 + (c * c).sum(0)
    mean = s / n
    return mean, (s2 / n - mean**2) * n / (n - 1)


@pytest.mark.parametrize("fn", [stats_right, stats_concat])
def test_population_stats_right_answers_pass(fn, capsys):
    bn.check.population_stats(fn)
    out = capsys.readouterr().out
    assert "✔ population_stats: correct" in out
    assert max(len(line) for line in out.splitlines()) <= 88  # the book's code width


@pytest.mark.parametrize(("fn", "message"), [
    (stats_mean_of_means, "plain average of the chunk means"),
    (stats_biased, "biased one"),
    (stats_within_only, "average of the chunk variances"),
    (stats_mean_of_unbiased, "average of the unbiased chunk variances"),
    (stats_one_pass, "catastrophic cancellation"),
    (not_done, "not attempted"),
    (lambda chunks: (chunks[0].mean(0),), "return a pair"),
])
def test_population_stats_mistakes_are_named(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.population_stats(fn)


# --- fading_start (predict) ---------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_fading_start_passes_any_honest_prediction_folded_to_the_column(lang, monkeypatch, capsys):
    monkeypatch.setenv("BNCOURSE_LANG", lang)
    for guess in (10, 44, 500):
        bn.check.fading_start(guess, 46)
        out = capsys.readouterr().out
        assert out.startswith("✔ fading_start")
        assert max(len(line) for line in out.splitlines()) <= 88
    assert "0.9^n" in out


@pytest.mark.parametrize(("guess", "message"), [
    (None, "expected your prediction as a number"),
    ("44", "expected your prediction as a number"),
    (0, "outside"),
])
def test_fading_start_wants_a_prediction(guess, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.fading_start(guess, 46)


# --- ported_momentum (diagnose) ------------------------------------------------------------------


def script(momentum, norm="torch_bn", lr=0.1):
    """The exercise's training script with the layers' momentum set to ``momentum``."""
    def train(data, seeds):
        def make():
            model = bn.models.mlp([64, 64, 64, 10], norm=norm)
            for layer in bn.inference.bn_layers(model):
                layer.momentum = momentum
            return model
        return bn.train(make, data, 600, lr=lr, seeds=seeds, batch_size=8, progress=False).models
    return train


def precise_bn(data, seeds):  # the bug kept, but exact statistics after training: also a fix
    nets = script(0.99)(data, seeds)
    return bn.inference.recompute_bn_stats(nets, data.x_train)


@pytest.mark.parametrize("fn", [script(0.01), precise_bn])
def test_ported_momentum_fixes_pass(fn, capsys):
    bn.check.ported_momentum(fn)
    out = capsys.readouterr().out
    assert "✔ ported_momentum: correct" in out
    assert max(len(line) for line in out.splitlines()) <= 88


@pytest.mark.parametrize(("fn", "message"), [
    (script(0.99), "little more than the last batch"),
    (script(0.0), "never updates the buffers"),
    (script(None), "cumulative average"),
    (lambda data, seeds: None, "return the trained networks"),
    (lambda data, seeds: [torch.nn.Linear(64, 10) for _ in seeds], "no batch-norm layer"),
    (not_done, "not attempted"),
])
def test_ported_momentum_wrong_fixes_are_named(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.ported_momentum(fn)


def test_ported_momentum_speaks_chinese(monkeypatch):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed, match="新一批的权重"):
        bn.check.ported_momentum(script(0.99))


# --- running_mean_noise (derive) -----------------------------------------------------------------


def noise_right(sigma, m, momentum):
    return sigma * (momentum / ((2 - momentum) * m)) ** 0.5


def noise_from_window(sigma, m, momentum):  # the same, through the effective window
    return sigma / (m * bn.inference.effective_window(momentum)) ** 0.5


def test_running_mean_noise_right_answers_pass(capsys):
    for fn in (noise_right, noise_from_window):
        bn.check.running_mean_noise(fn)
        assert "✔ running_mean_noise: correct" in capsys.readouterr().out


@pytest.mark.parametrize(("fn", "message"), [
    (lambda s, m, a: s / m**0.5, "noise of one batch mean"),
    (lambda s, m, a: s * (a / m) ** 0.5, "1 / momentum batches"),
    (lambda s, m, a: s * (a / 2 / m) ** 0.5, "small-momentum approximation"),
    (lambda s, m, a: s * ((1 - a) / ((1 + a) * m)) ** 0.5, "momentum reversed"),
    (lambda s, m, a: noise_right(s, m, a) ** 2, "returned the variance"),
    (lambda s, m, a: s * (a / (2 - a)) ** 0.5, "m is missing"),
    (lambda s, m, a: s / m**0.5 * a / (2 - a), "square root"),
    (lambda s, m, a: 1.1 * noise_right(s, m, a), "wrong result"),
    (lambda s, m, a: "small", "return a number"),
    (not_done, "not attempted"),
])
def test_running_mean_noise_mistakes_are_named(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.running_mean_noise(fn)


# --- batch_mean_std -----------------------------------------------------------------------------


def mean_std_right(x, m):
    n = x.shape[0]
    return x.std(0, unbiased=False) * ((n - m) / ((n - 1) * m)) ** 0.5


def mean_std_unbiased_right(x, m):  # the unbiased std with the correction (N - m) / N: also right
    return x.std(0) * ((1 - m / x.shape[0]) / m) ** 0.5


def mean_std_reference(x, m):
    return bn.inference.mean_noise_theory(m, x.shape[0]) * x.std(0, unbiased=False)


def mean_std_variance(x, m):
    return mean_std_right(x, m) ** 2


def mean_std_over_m(x, m):
    n = x.shape[0]
    return x.std(0, unbiased=False) * ((n - m) / (n - 1)) ** 0.5 / m


def mean_std_no_fpc(x, m):
    return x.std(0, unbiased=False) / m**0.5


def mean_std_no_fpc_unbiased(x, m):
    return x.std(0) / m**0.5


def mean_std_fpc_no_sqrt(x, m):
    n = x.shape[0]
    return x.std(0, unbiased=False) * (n - m) / (n - 1) / m**0.5


def mean_std_biased_over_n(x, m):
    return x.std(0, unbiased=False) * ((1 - m / x.shape[0]) / m) ** 0.5


def mean_std_unbiased_over_n_minus_1(x, m):
    n = x.shape[0]
    return x.std(0) * ((n - m) / ((n - 1) * m)) ** 0.5


def mean_std_wrong_axis(x, m):
    n = x.shape[0]
    return x.std(1, unbiased=False) * ((n - m) / ((n - 1) * m)) ** 0.5


def mean_std_empirical(x, m):  # a Monte Carlo estimate is not a prediction: a few % off
    idx = torch.rand(2000, x.shape[0], generator=torch.Generator().manual_seed(0)).argsort(1)[:, :m]
    return x[idx].mean(1).std(0)


@pytest.mark.parametrize("fn", [mean_std_right, mean_std_unbiased_right, mean_std_reference])
def test_batch_mean_std_right_answers_pass(fn, capsys):
    bn.check.batch_mean_std(fn)
    out = capsys.readouterr().out
    assert "✔ batch_mean_std: correct" in out
    assert max(len(line) for line in out.splitlines()) <= 88  # the book's code width


@pytest.mark.parametrize(("fn", "message"), [
    (mean_std_variance, "returned the variance"),
    (mean_std_over_m, "divided by m"),
    (mean_std_no_fpc, "correction is missing"),
    (mean_std_no_fpc_unbiased, "correction is missing"),
    (mean_std_fpc_no_sqrt, "multiplies the variance"),
    (mean_std_biased_over_n, r"not \(N - m\) / N"),
    (mean_std_unbiased_over_n_minus_1, r"unbiased std x.std\(0\) with the correction"),
    (mean_std_wrong_axis, r"expected a result of shape \(3,\), got \(10,\)"),
    (mean_std_empirical, "wrong result"),
    (not_done, "not attempted"),
    (lambda x, m: None, "returned None"),
])
def test_batch_mean_std_mistakes_are_named(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.batch_mean_std(fn)


# --- group_norm ---------------------------------------------------------------------------------


def gn_right(x, groups, eps):
    g = x.reshape(x.shape[0], groups, -1)
    mean, var = g.mean(-1, keepdim=True), g.var(-1, unbiased=False, keepdim=True)
    return ((g - mean) / torch.sqrt(var + eps)).reshape_as(x)


def gn_layer(x, groups, eps):
    return torch_F.layer_norm(x, x.shape[1:], eps=eps)


def gn_batch(x, groups, eps):
    return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps)


def gn_interleaved(x, groups, eps):
    n, c = x.shape
    g = x.reshape(n, c // groups, groups)
    mean, var = g.mean(1, keepdim=True), g.var(1, unbiased=False, keepdim=True)
    return ((g - mean) / torch.sqrt(var + eps)).reshape_as(x)


def gn_unbiased(x, groups, eps):
    g = x.reshape(x.shape[0], groups, -1)
    return ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, keepdim=True) + eps)).reshape_as(x)


def gn_no_eps(x, groups, eps):
    return gn_right(x, groups, 0.0)


def test_group_norm_right_answer_passes(capsys):
    bn.check.group_norm(gn_right)
    out = capsys.readouterr().out
    assert "✔ group_norm: correct" in out
    assert max(len(line) for line in out.splitlines()) <= 88  # the book's code width


@pytest.mark.parametrize(("fn", "message"), [
    (gn_layer, "layer norm"),
    (gn_batch, "over the batch"),
    (gn_interleaved, "interleave"),
    (gn_unbiased, "unbiased variance"),
    (gn_no_eps, "eps is missing"),
    (not_done, "not attempted"),
])
def test_group_norm_mistakes_are_named(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.group_norm(fn)


@pytest.mark.parametrize(("check", "fn", "message"), [
    ("population_stats", stats_biased, "方差是有偏的"),
    ("batch_mean_std", mean_std_no_fpc, "有限总体校正"),
    ("group_norm", gn_layer, "层标准化"),
    ("running_mean_noise", lambda s, m, a: s / m**0.5, "单个批均值的噪声"),
])
def test_messages_speak_chinese(check, fn, message, monkeypatch):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed, match=message):
        getattr(bn.check, check)(fn)


def test_passes_speak_chinese(monkeypatch, capsys):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    bn.check.group_norm(gn_right)
    assert "✔ group_norm：正确（" in capsys.readouterr().out


def test_checks_are_exported():
    for name in ("population_stats", "fading_start", "ported_momentum", "running_mean_noise",
                 "batch_mean_std", "group_norm"):
        assert name in bn.check.inference.__all__
        assert callable(getattr(bn.check, name))
