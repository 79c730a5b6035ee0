"""The Chapter 8 exercise checks: right answers pass, the typical wrong answers get their own message."""

import pytest
import torch

import bncourse as bn
from bncourse.teach.check import CheckFailed

# --- merge_shards ---------------------------------------------------------------------------------


def merge_right(a, b):
    (n_a, mean_a, var_a), (n_b, mean_b, var_b) = a, b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, (n_a * var_a + n_b * var_b) / n + delta**2 * n_a * n_b / n**2


def merge_with_package(a, b):  # the layer's own merge: also right
    counts = torch.tensor([a[0], b[0]])
    n, mean, m2 = bn.sync.merge_moments(counts, torch.stack([a[1], b[1]]),
                                        torch.stack([a[2] * a[0], b[2] * b[0]]))
    return int(n), mean, m2 / n


def merge_plain_means(a, b):
    n, _, var = merge_right(a, b)
    return n, (a[1] + b[1]) / 2, var


def merge_no_spread(a, b):
    n = a[0] + b[0]
    return n, (a[0] * a[1] + b[0] * b[1]) / n, (a[0] * a[2] + b[0] * b[2]) / n


def merge_plain_variances(a, b):
    n, mean, _ = merge_right(a, b)
    return n, mean, (a[2] + b[2]) / 2


def merge_unbiased(a, b):
    n, mean, var = merge_right(a, b)
    return n, mean, var * n / (n - 1)


def merge_sum_of_squares(a, b):  # E[x^2] - E[x]^2, in the input's precision
    n = a[0] + b[0]
    mean = (a[0] * a[1] + b[0] * b[1]) / n
    squares = a[0] * (a[2] + a[1] ** 2) + b[0] * (b[2] + b[1] ** 2)
    return n, mean, squares / n - mean**2


def merge_not_done(a, b):
    raise NotImplementedError


@pytest.mark.parametrize("fn", [merge_right, merge_with_package])
def test_merge_shards_accepts_right_answers(fn, capsys):
    bn.check.merge_shards(fn)
    assert "merge_shards: correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (merge_plain_means, "plain average of the two means"),
        (merge_no_spread, "count-weighted average of the two variances"),
        (merge_plain_variances, "plain average of the two variances"),
        (merge_unbiased, "unbiased variance"),
        (merge_sum_of_squares, "E\\[x\\^2\\] - E\\[x\\]\\^2, cancels catastrophically in float32"),
        (merge_not_done, "not attempted yet"),
    ],
)
def test_merge_shards_names_the_mistake(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.merge_shards(fn)


# --- batch_renorm ---------------------------------------------------------------------------------


def renorm(x, running_mean, running_std, r_max, d_max, eps, *, clip=True, sign=1.0, r_up=True):
    mean, var = x.mean(0), x.var(0, unbiased=False)
    std = torch.sqrt(var + eps)
    r = std / running_std if r_up else running_std / std
    d = sign * (mean - running_mean) / running_std
    if clip:
        r, d = r.clamp(1 / r_max, r_max), d.clamp(-d_max, d_max)
    return (x - mean) / std * r + d


def renorm_in_place(x, running_mean, running_std, r_max, d_max, eps):
    out = renorm(x, running_mean, running_std, r_max, d_max, eps)
    running_mean.lerp_(x.mean(0), 0.1)
    return out


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda *a: renorm(*a, clip=False), "r and d are not clipped"),
        (lambda *a: renorm(*a, sign=-1.0), "d has the wrong sign"),
        (lambda *a: renorm(*a, r_up=False), "r is upside down"),
        (lambda x, m, s, r, d, eps: renorm(x, m, s, r, d, 0.0), "eps is missing"),
        (lambda x, *a: (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + a[-1]), "plain batch norm"),
        (renorm_in_place, "changed running_mean or running_std"),
    ],
)
def test_batch_renorm_names_the_mistake(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.batch_renorm(fn)


def test_batch_renorm_accepts_the_right_answer(capsys):
    bn.check.batch_renorm(renorm)
    assert "batch_renorm: correct" in capsys.readouterr().out


# --- sync_crossover -------------------------------------------------------------------------------


def crossover(channels, params, *, gather_k=lambda k: k - 1, count=1, backward=True,
              grads=lambda k, p: 2 * (k - 1) / k * p, strict=False):
    """Walk K upward until batch norm's values per process and step reach the gradients'."""
    k = 2
    while True:
        bn_values = sum(gather_k(k) * (2 * c + count) + (2 * (k - 1) / k * 2 * c if backward else 0)
                        for c in channels)
        if (bn_values > grads(k, params)) if strict else (bn_values >= grads(k, params)):
            return k
        k += 1


@pytest.mark.parametrize("strict", [False, True])  # no network of the check ties exactly
def test_sync_crossover_accepts_the_right_answer(capsys, strict):
    bn.check.sync_crossover(lambda c, p: crossover(c, p, strict=strict))
    assert "sync_crossover: correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda c, p: crossover(c, p, backward=False), "backward all-reduce of 2C values per layer"),
        (lambda c, p: crossover(c, p, gather_k=lambda k: k), "one process too few: an all-gather"),
        (lambda c, p: crossover(c, p, count=0), "the count is missing"),
        (lambda c, p: crossover(c, p, grads=lambda k, p: p), r"2 \(K - 1\) / K \* P per process, not P"),
        (lambda c, p: crossover(c, p, grads=lambda k, p: 2 * p), "just under 2P"),
        (lambda c, p: crossover(c, p) - 1, "one process too few"),
        (lambda c, p: None, "did you forget `return`"),
        (lambda c, p: 2, "wrong number of processes"),
    ],
)
def test_sync_crossover_names_the_mistake(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.sync_crossover(fn)


# --- ghost_norm -----------------------------------------------------------------------------------


def ghost_right(x, g, eps):
    runs = x.view(x.shape[0] // g, g, x.shape[1])
    mean, var = runs.mean(1, keepdim=True), runs.var(1, unbiased=False, keepdim=True)
    return ((runs - mean) / torch.sqrt(var + eps)).reshape(x.shape)


def ghost_interleaved(x, g, eps):  # groups rows j, j + N/g, ... together
    runs = x.view(g, x.shape[0] // g, x.shape[1])
    mean, var = runs.mean(0, keepdim=True), runs.var(0, unbiased=False, keepdim=True)
    return ((runs - mean) / torch.sqrt(var + eps)).reshape(x.shape)


def test_ghost_norm_accepts_the_right_answer(capsys):
    bn.check.ghost_norm(ghost_right)
    assert "ghost_norm: correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda x, g, eps: (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps),
         "the whole batch is normalized at once"),
        (ghost_interleaved, "the ghost batches interleave"),
        (lambda x, g, eps: torch.cat([(r - r.mean(0)) / torch.sqrt(r.var(0) + eps) for r in x.split(g)]),
         "the variance is the unbiased one"),
        (lambda x, g, eps: ghost_right(x, g, 0.0), "eps is missing"),
        (lambda x, g, eps: x, "wrong output"),
    ],
)
def test_ghost_norm_names_the_mistake(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.ghost_norm(fn)


# --- merge_on_device --------------------------------------------------------------------------------


def device_right(counts, means, m2s):
    n = counts.sum()
    w = counts.to(means.dtype)[:, None]
    mean = (w * means).sum(0) / n
    return n, mean, (m2s.sum(0) + (w * (means - mean) ** 2).sum(0)) / n


def device_item(counts, means, m2s):
    n, mean, var = device_right(counts, means, m2s)
    return int(n.item()), mean, var


def device_mask(counts, means, m2s):  # drops empty shards with a boolean mask: needs the values
    keep = counts > 0
    return device_right(counts[keep], means[keep], m2s[keep])


def test_merge_on_device_accepts_the_right_answer(capsys):
    bn.check.merge_on_device(device_right)
    bn.check.merge_on_device(lambda c, m, v: bn.sync.merge_moments(c, m, v)[:2]
                             + (bn.sync.merge_moments(c, m, v)[2] / c.sum(),))
    assert "merge_on_device: correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (device_item, r"brings values to Python \(.item\(\)\)"),
        (device_mask, "cannot run on shapes alone"),
        (lambda c, m, v: (c.sum(), m.mean(0), device_right(c, m, v)[2]), "plain average of the shards"),
        (lambda c, m, v: (c.sum(), device_right(c, m, v)[1], v.sum(0) / c.sum()),
         "spread of the shards' means"),
        (lambda c, m, v: (c.sum().float(), *device_right(c, m, v)[1:]), "as an int64 tensor"),
    ],
)
def test_merge_on_device_names_the_mistake(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.merge_on_device(fn)


# --- group_size --------------------------------------------------------------------------------------


def group_right(k, batch, enough):
    per = batch // k
    for g in range(1, k + 1):
        if k % g == 0 and g * per >= enough:
            return g
    return k


def test_group_size_accepts_the_right_answer(capsys):
    bn.check.group_size(group_right)
    assert "group_size: correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda k, b, e: min(k, -(-e // (b // k))), "divide the devices evenly"),
        (lambda k, b, e: k, "more than needed"),
        (lambda k, b, e: 1, "a group of G holds G times that"),
    ],
)
def test_group_size_names_the_mistake(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.group_size(fn)


# --- ghost_running ------------------------------------------------------------------------------------


def running_right(x, g, mean0, var0, momentum):
    runs = x.view(-1, g, x.shape[1])
    return ((1 - momentum) * mean0 + momentum * runs.mean(1).mean(0),
            (1 - momentum) * var0 + momentum * runs.var(1).mean(0))


def test_ghost_running_accepts_the_right_answer(capsys):
    bn.check.ghost_running(running_right)
    assert "ghost_running: correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda x, g, m0, v0, mom: ((1 - mom) * m0 + mom * x.mean(0), (1 - mom) * v0 + mom * x.var(0)),
         "the whole batch's"),
        (lambda x, g, m0, v0, mom: ((1 - mom) * m0 + mom * x.view(-1, g, x.shape[1]).mean(1).mean(0),
                                    (1 - mom) * v0 + mom * x.view(-1, g, x.shape[1]).var(1, unbiased=False)
                                    .mean(0)), "biased"),
        (lambda x, g, m0, v0, mom: running_right(x, g, m0, v0, 1 - mom)[:1]
         + ((mom * v0 + (1 - mom) * x.view(-1, g, x.shape[1]).var(1).mean(0)),), "momentum is reversed"),
        (lambda x, g, m0, v0, mom: (m0, v0), "wrong running statistics"),
    ],
)
def test_ghost_running_names_the_mistake(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.ghost_running(fn)


# --- renorm_bounds ------------------------------------------------------------------------------------


def bounds_right(step, warmup, ramp, r_max, d_max):
    t = 1.0 if ramp == 0 else min(1.0, max(0.0, (step - warmup) / ramp))
    if step < warmup:
        t = 0.0
    return 1 + t * (r_max - 1), t * d_max


def test_renorm_bounds_accepts_the_right_answer(capsys):
    bn.check.renorm_bounds(bounds_right)
    assert "renorm_bounds: correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda s, w, r, rm, dm: bounds_right(s, 0, r, rm, dm), "the ramp starts at step 0"),
        (lambda s, w, r, rm, dm: (rm / dm * bounds_right(s, w, r, rm, dm)[1],
                                  bounds_right(s, w, r, rm, dm)[1]), "not from 0"),
        (lambda s, w, r, rm, dm: (1.0, 0.0), "never open"),
        (lambda s, w, r, rm, dm: (rm, dm), "applied from the start"),
    ],
)
def test_renorm_bounds_names_the_mistake(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.renorm_bounds(fn)
