"""The Chapter 4 exercise checks: right answers pass, the typical wrong answers get their own message."""

import pytest
import torch
import torch.nn.functional as torch_F

import bncourse as bn
from bncourse.teach.check import CheckFailed

# --- running_update -----------------------------------------------------------------------------


def update_right(running_mean, running_var, x, momentum):
    return ((1 - momentum) * running_mean + momentum * x.mean(0),
            (1 - momentum) * running_var + momentum * x.var(0, unbiased=True))


def update_in_place(running_mean, running_var, x, momentum):  # as torch does it: also right
    running_mean.mul_(1 - momentum).add_(momentum * x.mean(0))
    running_var.mul_(1 - momentum).add_(momentum * x.var(0))
    return running_mean, running_var


def update_reversed(running_mean, running_var, x, momentum):
    return (momentum * running_mean + (1 - momentum) * x.mean(0),
            momentum * running_var + (1 - momentum) * x.var(0))


def update_biased(running_mean, running_var, x, momentum):
    return ((1 - momentum) * running_mean + momentum * x.mean(0),
            (1 - momentum) * running_var + momentum * x.var(0, unbiased=False))


def update_cs231n(running_mean, running_var, x, momentum):
    return (momentum * running_mean + (1 - momentum) * x.mean(0),
            momentum * running_var + (1 - momentum) * x.var(0, unbiased=False))


def update_std(running_mean, running_var, x, momentum):
    return ((1 - momentum) * running_mean + momentum * x.mean(0),
            (1 - momentum) * running_var + momentum * x.std(0))


def update_mean_only(running_mean, running_var, x, momentum):
    return (1 - momentum) * running_mean + momentum * x.mean(0), running_var


def update_batch_only(running_mean, running_var, x, momentum):
    return x.mean(0), x.var(0)


def update_wrong_axis(running_mean, running_var, x, momentum):
    return ((1 - momentum) * running_mean + momentum * x.mean(1),
            (1 - momentum) * running_var + momentum * x.var(1))


def not_done(*args):
    raise NotImplementedError


@pytest.mark.parametrize("fn", [update_right, update_in_place])
def test_running_update_right_answers_pass(fn, capsys):
    bn.check.running_update(fn)
    out = capsys.readouterr().out
    assert "✔ running_update: correct" in out
    assert max(len(line) for line in out.splitlines()) <= 88  # the book's code width


@pytest.mark.parametrize(("fn", "message"), [
    (update_reversed, "momentum reversed"),
    (update_biased, "biased batch variance"),
    (update_cs231n, "CS231n's convention"),
    (update_std, "standard deviation"),
    (update_mean_only, "running variance was not updated"),
    (update_batch_only, "batch statistics themselves"),
    (update_wrong_axis, r"raised RuntimeError.*\(16, 5\)"),
    (not_done, "not attempted"),
    (lambda *a: None, "return a pair"),
])
def test_running_update_mistakes_are_named(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.running_update(fn)


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


# --- eval_batch_norm ----------------------------------------------------------------------------


def view(t, x):
    return t.reshape(1, -1, *([1] * (x.dim() - 2)))


def eval_right(x, running_mean, running_var, weight, bias, eps):
    x_hat = (x - view(running_mean, x)) / torch.sqrt(view(running_var, x) + eps)
    return view(weight, x) * x_hat + view(bias, x)


def eval_batch_stats(x, running_mean, running_var, weight, bias, eps):
    dims = (0, *range(2, x.dim()))
    mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    return view(weight, x) * (x - mean) / torch.sqrt(var + eps) + view(bias, x)


def eval_no_eps(x, running_mean, running_var, weight, bias, eps):
    return view(weight, x) * (x - view(running_mean, x)) / view(running_var, x).sqrt() + view(bias, x)


def eval_no_sqrt(x, running_mean, running_var, weight, bias, eps):
    return view(weight, x) * (x - view(running_mean, x)) / (view(running_var, x) + eps) + view(bias, x)


def eval_swapped(x, running_mean, running_var, weight, bias, eps):
    return eval_right(x, running_mean, running_var, bias, weight, eps)


def eval_no_affine(x, running_mean, running_var, weight, bias, eps):
    return (x - view(running_mean, x)) / torch.sqrt(view(running_var, x) + eps)


def eval_updates_buffers(x, running_mean, running_var, weight, bias, eps):
    running_mean.mul_(0.9).add_(0.1 * x.mean(0))
    return eval_right(x, running_mean, running_var, weight, bias, eps)


def eval_2d_only(x, running_mean, running_var, weight, bias, eps):
    return weight * (x - running_mean) / torch.sqrt(running_var + eps) + bias


def test_eval_batch_norm_right_answer_passes(capsys):
    bn.check.eval_batch_norm(eval_right)
    out = capsys.readouterr().out
    assert "✔ eval_batch_norm: correct" in out
    assert max(len(line) for line in out.splitlines()) <= 88  # the book's code width


@pytest.mark.parametrize(("fn", "message"), [
    (eval_batch_stats, "statistics of the batch itself"),
    (eval_no_eps, "eps is missing"),
    (eval_no_sqrt, "divided by the variance"),
    (eval_swapped, "swapped"),
    (eval_no_affine, "not applied"),
    (eval_updates_buffers, "changed the running statistics"),
    (eval_2d_only, r"raised RuntimeError.*\(5, 4, 7\)"),
    (not_done, "not attempted"),
])
def test_eval_batch_norm_mistakes_are_named(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.eval_batch_norm(fn)


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


def test_checks_are_exported():
    for name in ("running_update", "population_stats", "eval_batch_norm", "batch_mean_std", "group_norm"):
        assert name in bn.check.inference.__all__
        assert callable(getattr(bn.check, name))
