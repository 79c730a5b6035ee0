"""The Chapter 8 exercise checks: right answers pass, the typical wrong answers get their own message."""

import pytest
import torch

import bncourse as bn
from bncourse.teach.check import CheckFailed

# --- within_fraction ------------------------------------------------------------------------------


def within_right(m, batch):
    return (m - 1) / m * batch / (batch - 1)


def test_within_fraction_accepts_the_right_answer(capsys):
    bn.check.within_fraction(within_right)
    bn.check.within_fraction(lambda m, b: torch.tensor(1 - 1 / m) / (1 - 1 / b))  # a tensor is a number
    assert "within_fraction: correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda m, b: (m - 1) / m, r"short of sigma\^2, by the factor \(B - 1\) / B"),
        (lambda m, b: (m - 1) / m * (b - 1) / b, "upside down: E\\[var_B\\]"),
        (lambda m, b: m / b, "share of the examples"),
        (lambda m, b: 0.3, "wrong fraction.*a simulation of 4,000 batches measures"),
        (lambda m, b: "half", "return one number"),
        (lambda m, b: None, "return one number"),
    ],
)
def test_within_fraction_names_the_mistake(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.within_fraction(fn)


def test_within_fraction_speaks_chinese(monkeypatch):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed, match="还要除以它"):
        bn.check.within_fraction(lambda m, b: (m - 1) / m)


# --- per_device_fix (diagnose) ----------------------------------------------------------------------


def _train(seed, ghost):
    from bncourse.smallbatch import GhostBatchNorm, replace_norms

    raw = bn.data.digits()
    data = bn.data.Split(raw.x_train.double() / 16, raw.y_train, raw.x_test.double() / 16, raw.y_test)

    def build():
        net = bn.models.mlp([64, 64, 64, 10], norm="bn").double()
        if ghost < 32:
            replace_norms(net, lambda m: GhostBatchNorm.like(m, ghost))
        return net

    return bn.train(build, data, 84, 0.1, seeds=[seed], batch_size=32, progress=False).models[0]


@pytest.mark.parametrize("ghost", [32, 8])  # synchronized (the whole batch), or groups of 4 devices
def test_per_device_fix_accepts_the_fixes(ghost, capsys):
    bn.check.per_device_fix(lambda seed: _train(seed, ghost))
    assert "per_device_fix: correct" in capsys.readouterr().out


def test_per_device_fix_names_the_mistake():
    with pytest.raises(CheckFailed, match="still normalizes runs of 2 examples"):
        bn.check.per_device_fix(lambda seed: _train(seed, 2))  # the bug, unfixed
    with pytest.raises(CheckFailed, match="still normalizes runs of 4 examples"):
        bn.check.per_device_fix(lambda seed: _train(seed, 4))  # groups too small
    untrained = bn.models.mlp([64, 64, 64, 10], norm="bn").double()
    with pytest.raises(CheckFailed, match="reaches only"):
        bn.check.per_device_fix(lambda seed: untrained)
    with pytest.raises(CheckFailed, match="no batch norm layer left"):
        bn.check.per_device_fix(lambda seed: bn.models.mlp([64, 64, 64, 10], norm=None))
    with pytest.raises(CheckFailed, match="return the trained network"):
        bn.check.per_device_fix(lambda seed: 0.97)
    with pytest.raises(CheckFailed, match="not attempted yet"):
        bn.check.per_device_fix(lambda seed: exec("raise NotImplementedError"))


def test_per_device_fix_speaks_chinese(monkeypatch):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed, match="每 2 个样本一组"):
        bn.check.per_device_fix(lambda seed: _train(seed, 2))


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


@pytest.mark.parametrize(
    ("check", "fn"),
    [
        (bn.check.sync_crossover, lambda c, p: 2),
        (bn.check.ghost_norm, lambda x, g, eps: x),
        (bn.check.ghost_running, lambda x, g, m0, v0, mom: (m0, v0)),
        (bn.check.merge_on_device, lambda c, m, v: (c.sum(), m.mean(0), v.sum(0) / c.sum())),
    ],
)
def test_the_checks_speak_chinese(monkeypatch, check, fn):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed) as info:
        check(fn)
    assert "：" in str(info.value) and not any(w in str(info.value) for w in (" the ", " is ", "wrong"))


# --- predicted (the predict exercises) ------------------------------------------------------------------


def test_predicted_passes_any_honest_prediction_and_wraps(capsys):
    bn.check.predicted("lost", 28, 30.0, low=0, high=100, explain="Because. " * 20, fmt=".0f")
    bn.check.predicted("lost", 5, 30.0, low=0, high=100, explain="Because.", fmt=".0f")
    out = capsys.readouterr().out
    assert "spot on" in out and "below the run by 25" in out
    assert max(len(line) for line in out.splitlines()) <= 88


@pytest.mark.parametrize(("guess", "message"), [(None, "as a number"), (float("nan"), "as a number"),
                                                ("25", "as a number"), (True, "as a number"),
                                                (150, "outside")])
def test_predicted_refuses_a_prediction_not_made(guess, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.predicted("lost", guess, 30.0, low=0, high=100, explain="")


def test_predicted_speaks_chinese(monkeypatch, capsys):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    bn.check.predicted("lost", 40, 30.0, low=0, high=100, explain="因为。", fmt=".0f")
    assert "比测量值高 10" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="不在"):
        bn.check.predicted("lost", -1, 30.0, low=0, high=100, explain="")
