"""The checks of Chapter 6's training pages (teach/check/training.py): right answers pass, each typical
mistake is named, in English and in Chinese."""

import math

import pytest
import torch

import bncourse as bn
from bncourse.teach.check import CheckFailed

# ---- width_for_shift (06e, derive) ----------------------------------------------------------


def width(target, rho, mean, var, p, mistake=None):
    """The smallest width, solved in closed form, right or with one typical mistake."""
    q = (1 - p) / p if mistake == "keep" else p / (1 - p)
    second = var if mistake == "no mean" else var + mean**2
    needed = target * q * second / ((1 - target) * var)   # what 1 + (d - 1) rho must reach
    d = needed / rho if mistake == "squared" else 1 + (needed - 1) / rho
    if mistake == "float":
        return d
    d = math.floor(d) if mistake == "floor" else math.ceil(d)
    return d if mistake == "no max" else max(1, d)


def test_width_for_shift(capsys):
    bn.check.width_for_shift(width)
    assert "✔ width_for_shift: correct" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, message", [
    ("no mean", "ignores the means"),
    ("keep", "probability of DROPPING"),
    ("squared", "own variances"),
    ("floor", "round the width up"),
    ("float", "whole number"),
    ("no max", "at least 1"),
])
def test_width_for_shift_mistakes(mistake, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.width_for_shift(lambda *a: width(*a, mistake=mistake))


def test_width_for_shift_chinese(monkeypatch):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed, match="丢弃一个单元的概率"):
        bn.check.width_for_shift(lambda *a: width(*a, mistake="keep"))


def test_width_for_shift_not_attempted():
    def stub(*args):
        raise NotImplementedError
    with pytest.raises(CheckFailed, match="not attempted"):
        bn.check.width_for_shift(stub)


# ---- fixed_adapt (06g, diagnose) -------------------------------------------------------------


def passes(model, images, times=1, cumulative=False, eval_after=True):
    """Run ``images`` through ``model`` in training mode ``times`` times, without gradients."""
    if cumulative:
        for layer in bn.inference.bn_layers(model):
            layer.reset_running_stats()
            layer.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(times):
            for batch in images.split(64):
                model(batch)
    return model.eval() if eval_after else model


def buggy(model, images):
    model.eval()
    with torch.no_grad():
        for batch in images.split(64):
            model(batch)
    return model


def trained(model, images):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for batch in images.split(64):
        opt.zero_grad()
        model(batch).pow(2).mean().backward()
        opt.step()
    return model.eval()


def no_reset(model, images):
    for layer in bn.inference.bn_layers(model):
        layer.momentum = None    # the count of batches goes on from the source's training
    return passes(model, images)


@pytest.mark.parametrize("fix", [
    lambda m, x: passes(m, x, cumulative=True),
    lambda m, x: passes(m, x, times=5),
    lambda m, x: bn.inference.recompute_bn_stats(m, x),
    lambda m, x: (passes(m, x, times=5), None)[1],      # in place, returning nothing
], ids=["cumulative", "five passes", "recompute", "in place"])
def test_fixed_adapt(fix, capsys):
    torch.set_num_threads(1)
    bn.check.fixed_adapt(fix)
    assert "✔ fixed_adapt: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fix, message", [
    (buggy, "did not move"),
    (lambda m, x: passes(m, x), "part of the way"),
    (no_reset, "part of the way"),
    (lambda m, x: passes(m, x, times=5, eval_after=False), "training mode"),
    (trained, "only the running statistics"),
    (lambda m, x: 42, "return the adapted model"),
], ids=["eval mode", "one pass", "momentum None without reset", "left in training mode",
        "trained on the images", "not a model"])
def test_fixed_adapt_mistakes(fix, message):
    torch.set_num_threads(1)
    with pytest.raises(CheckFailed, match=message):
        bn.check.fixed_adapt(fix)


def test_fixed_adapt_chinese(monkeypatch):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    torch.set_num_threads(1)
    with pytest.raises(CheckFailed, match="评估模式下前向传播从不更新"):
        bn.check.fixed_adapt(buggy)
