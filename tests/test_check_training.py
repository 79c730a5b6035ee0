"""The checks of Chapter 6's training pages (teach/check/training.py): right answers pass, each typical
mistake is named, in English and in Chinese."""

import math

import pytest
import torch
from torch import nn

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


# ---- frozen_batch_norm (06g) -------------------------------------------------------------------


def make_frozen(mistake=None):
    class Frozen(nn.Module):
        def __init__(self, num_features, eps=1e-5):
            super().__init__()
            self.eps = eps
            if mistake == "parameters":
                self.weight = nn.Parameter(torch.ones(num_features))
            else:
                self.register_buffer("weight", torch.ones(num_features))
            for key, value in (("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
                self.register_buffer(key, torch.full((num_features,), value))

        def forward(self, x):
            if mistake == "batch stats" and self.training:
                return nn.functional.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
            eps = 0.0 if mistake == "no eps" else self.eps
            scale = self.weight / torch.sqrt(self.running_var + eps)
            shift = self.bias - self.running_mean * scale
            return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    return Frozen


def test_frozen_batch_norm(capsys):
    bn.check.frozen_batch_norm(make_frozen())
    assert "✔ frozen_batch_norm: correct" in capsys.readouterr().out
    for mistake, message in (("parameters", "has parameters"), ("batch stats", "batch's statistics"),
                             ("no eps", "eps is missing")):
        with pytest.raises(CheckFailed, match=message):
            bn.check.frozen_batch_norm(make_frozen(mistake))


def test_frozen_batch_norm_chinese(monkeypatch):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed, match="漏了 eps"):
        bn.check.frozen_batch_norm(make_frozen("no eps"))


# ---- train_with_frozen_bn (06g) --------------------------------------------------------------


def test_train_with_frozen_bn():
    def right(model):
        model.train()
        for m in bn.inference.bn_layers(model):
            m.eval()

    def children_only(model):
        model.train()
        for m in model.children():
            if isinstance(m, nn.BatchNorm1d | bn.nn.BatchNorm1d):
                m.eval()

    def grads_off(model):
        model.train()
        for m in bn.inference.bn_layers(model):
            m.requires_grad_(False)

    bn.check.train_with_frozen_bn(right)
    for fn, message in ((children_only, "nested"), (grads_off, "requires_grad"),
                        (lambda model: model.eval(), "dropout")):
        with pytest.raises(CheckFailed, match=message):
            bn.check.train_with_frozen_bn(fn)


def test_train_with_frozen_bn_chinese(monkeypatch):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed, match="model.modules\\(\\)"):
        bn.check.train_with_frozen_bn(lambda m: [m.train()] + [b.eval() for b in m.children()
                                                          if isinstance(b, nn.BatchNorm1d)] and None)
