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
