"""The Chapter 6 exercise checks: right answers pass, each typical mistake is named."""

import math

import pytest
import torch
from torch import nn

import bncourse as bn
from bncourse.check import CheckFailed

# ---- batch_norm_function --------------------------------------------------------------------


def make_function(forward_mistake=None, backward_mistake=None):
    """A batch-norm autograd Function, right or with one typical mistake."""

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, gamma, beta, eps):
            mean = x.mean(0)
            var = x.var(0, correction=int(forward_mistake == "unbiased"))
            inv_std = 1 / torch.sqrt(var + (0.0 if forward_mistake == "no eps" else eps))
            x_hat = (x - mean) * inv_std
            ctx.save_for_backward(x_hat, gamma, inv_std)
            if forward_mistake == "no affine":
                return x_hat
            return gamma * x_hat + beta

        @staticmethod
        def backward(ctx, dout):
            x_hat, gamma, inv_std = ctx.saved_tensors
            dx_hat = dout * gamma
            dx = dx_hat
            if backward_mistake != "constants":
                dx = dx - dx_hat.mean(0)
                if backward_mistake != "no var path":
                    dx = dx - x_hat * (dx_hat * x_hat).mean(0)
            dx = dx * inv_std
            dgamma, dbeta = (dout * x_hat).sum(0), dout.sum(0)
            if backward_mistake == "mean dgamma":
                dgamma = (dout * x_hat).mean(0)
            if backward_mistake == "swapped":
                dgamma, dbeta = dbeta, dgamma
            if backward_mistake == "three":
                return dx, dgamma, dbeta
            return dx, dgamma, dbeta, None

    return Fn


def test_batch_norm_function_passes(capsys):
    bn.check.batch_norm_function(make_function())
    assert "✔ batch_norm_function: correct" in capsys.readouterr().out


@pytest.mark.parametrize("kw, message", [
    (dict(forward_mistake="unbiased"), "unbiased variance"),
    (dict(forward_mistake="no eps"), "eps is missing"),
    (dict(forward_mistake="no affine"), "not applied"),
    (dict(backward_mistake="constants"), "constants"),
    (dict(backward_mistake="no var path"), "sigma\\^2 is missing"),
    (dict(backward_mistake="mean dgamma"), "mean over the batch"),
    (dict(backward_mistake="swapped"), "swapped"),
    (dict(backward_mistake="three"), "one gradient per input"),
])
def test_batch_norm_function_names_the_mistake(kw, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.batch_norm_function(make_function(**kw))


def test_batch_norm_function_refuses_a_non_function():
    with pytest.raises(CheckFailed, match="subclass of torch.autograd.Function"):
        bn.check.batch_norm_function(lambda x: x)


# ---- my_batch_norm ----------------------------------------------------------------------------

Fn = make_function()


def make_layer(mistake=None):
    """A BatchNorm1d for (N, C), right or with one typical mistake."""

    class Layer(nn.Module):
        def __init__(self, num_features, eps=1e-5, momentum=0.1):
            super().__init__()
            self.eps, self.momentum = eps, momentum
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
            if mistake == "parameter buffers":
                self.running_mean = nn.Parameter(torch.zeros(num_features))
            else:
                self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.full((num_features,), 0.0 if mistake == "var 0"
                                                           else 1.0))
            if mistake != "no counter":
                self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

        def forward(self, x):
            if not self.training and mistake != "eval batch stats":
                scale = self.weight / torch.sqrt(self.running_var + self.eps)
                return (x - self.running_mean) * scale + self.bias
            with torch.no_grad():
                if mistake != "no count":
                    self.num_batches_tracked += 1
                k = self.momentum
                if k is None:
                    k = 0.1 if mistake == "none as 0.1" else 1 / int(self.num_batches_tracked)
                if mistake == "reversed":
                    k = 1 - k
                var = x.var(0, unbiased=mistake != "biased running var")
                self.running_mean.mul_(1 - k).add_(k * x.mean(0))
                self.running_var.mul_(1 - k).add_(k * var)
            return Fn.apply(x, self.weight, self.bias, self.eps)

    return Layer


def test_my_batch_norm_passes(capsys):
    bn.check.my_batch_norm(make_layer())
    assert "✔ my_batch_norm: correct" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, message", [
    ("parameter buffers", "running_mean` is an nn.Parameter"),
    ("var 0", "running_var` should start at 1"),
    ("no counter", "no buffer `num_batches_tracked`"),
    ("no count", "num_batches_tracked is 0"),
    ("reversed", "momentum is reversed"),
    ("biased running var", "unbiased one"),
    ("none as 0.1", "cumulative average"),
    ("eval batch stats", "eval mode normalizes with the batch"),
])
def test_my_batch_norm_names_the_mistake(mistake, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.my_batch_norm(make_layer(mistake))


def test_my_batch_norm_passes_the_package_layer(capsys):
    bn.check.my_batch_norm(bn.nn.BatchNorm1d)
    assert "correct" in capsys.readouterr().out


def test_my_batch_norm_reports_a_wrong_gradient():
    Wrong = make_function(backward_mistake="no var path")

    class Layer(make_layer()):
        def forward(self, x):
            if not self.training:
                return super().forward(x)
            super().forward(x.detach())   # updates the statistics
            return Wrong.apply(x, self.weight, self.bias, self.eps)

    with pytest.raises(CheckFailed, match="dx differs"):
        bn.check.my_batch_norm(Layer)


# ---- bn_backward_spatial ---------------------------------------------------------------------


def spatial(dout, x, gamma, eps, dims=(0, 2, 3), count=None, paths=("mu", "var"), sums=(0, 2, 3)):
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, keepdim=True, correction=0)
    inv_std = 1 / torch.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    g = gamma.reshape(1, -1, 1, 1)
    dx_hat = dout * g
    m = count or math.prod(x.shape[d] for d in dims)
    dx = dx_hat
    if "mu" in paths:
        dx = dx - dx_hat.sum(dims, keepdim=True) / m
    if "var" in paths:
        dx = dx - x_hat * (dx_hat * x_hat).sum(dims, keepdim=True) / m
    return dx * inv_std, (dout * x_hat).sum(sums), dout.sum(sums)


def test_bn_backward_spatial_passes(capsys):
    bn.check.bn_backward_spatial(spatial)
    assert "✔ bn_backward_spatial: correct" in capsys.readouterr().out


def test_bn_backward_spatial_passes_the_package_kernel(capsys):
    def kernel(dout, x, gamma, eps):
        _, cache = bn.functional.batch_norm_forward(x, gamma, None, eps)
        return bn.functional.batch_norm_backward(dout, cache)

    bn.check.bn_backward_spatial(kernel)
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("kw, message", [
    (dict(dims=(0,)), "one mean per position"),
    (dict(dims=(2, 3)), "instance norm"),
    (dict(count="N"), "divided by N"),
    (dict(paths=("var",)), "through mu is missing"),
    (dict(paths=("mu",)), "sigma\\^2 is missing"),
    (dict(sums=(0,)), "one value per channel"),
])
def test_bn_backward_spatial_names_the_mistake(kw, message):
    def fn(dout, x, gamma, eps):
        kw2 = dict(kw)
        if kw2.get("count") == "N":
            kw2["count"] = x.shape[0]
        return spatial(dout, x, gamma, eps, **kw2)

    with pytest.raises(CheckFailed, match=message):
        bn.check.bn_backward_spatial(fn)


# ---- layer_norm_backward ---------------------------------------------------------------------


def ln_backward(dout, x, gamma, eps, dim=1, paths=("mu", "var"), unbiased=False, param_dim=0):
    mean = x.mean(dim, keepdim=True)
    var = x.var(dim, keepdim=True, correction=int(unbiased))
    inv_std = 1 / torch.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    dx_hat = dout * gamma
    dx = dx_hat
    if "mu" in paths:
        dx = dx - dx_hat.mean(dim, keepdim=True)
    if "var" in paths:
        dx = dx - x_hat * (dx_hat * x_hat).mean(dim, keepdim=True)
    return dx * inv_std, (dout * x_hat).sum(param_dim), dout.sum(param_dim)


def test_layer_norm_backward_passes(capsys):
    bn.check.layer_norm_backward(ln_backward)
    assert "✔ layer_norm_backward: correct" in capsys.readouterr().out


@pytest.mark.parametrize("kw, message", [
    (dict(dim=0), "batch norm's backward"),
    (dict(paths=("var",)), "through mu is missing"),
    (dict(paths=("mu",)), "sigma\\^2 is missing"),
    (dict(paths=()), "constants"),
    (dict(unbiased=True), "unbiased"),
    (dict(param_dim=1), "one value per example"),
])
def test_layer_norm_backward_names_the_mistake(kw, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.layer_norm_backward(lambda dout, x, gamma, eps: ln_backward(dout, x, gamma, eps, **kw))


# ---- norm_after_step and variance_shift ------------------------------------------------------


def test_norm_after_step():
    bn.check.norm_after_step(lambda w, g, lr, wd: math.hypot((1 - lr * wd) * w, lr * g))
    cases = [
        (lambda w, g, lr, wd: (1 - lr * wd) * w, "gradient step is missing"),
        (lambda w, g, lr, wd: (1 - lr * wd) * w + lr * g, "Pythagoras"),
        (lambda w, g, lr, wd: math.hypot((1 - wd) * w, lr * g), "learning rate multiplies"),
        (lambda w, g, lr, wd: ((1 - lr * wd) * w) ** 2 + (lr * g) ** 2, "square root"),
    ]
    for fn, message in cases:
        with pytest.raises(CheckFailed, match=message):
            bn.check.norm_after_step(fn)


def test_variance_shift():
    bn.check.variance_shift(lambda m, v, p: v / ((v + m * m) / (1 - p) - m * m))
    cases = [
        (lambda m, v, p: 1 - p, "ignores the mean"),
        (lambda m, v, p: ((v + m * m) / (1 - p) - m * m) / v, "upside down"),
        (lambda m, v, p: v / ((v + m * m) / p - m * m) if p else 1.0, "DROPPING"),
        (lambda m, v, p: v / ((v + m * m) / (1 - p)), "mean\\^2 is"),
    ]
    for fn, message in cases:
        with pytest.raises(CheckFailed, match=message):
            bn.check.variance_shift(fn)


# ---- frozen_batch_norm -----------------------------------------------------------------------


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


def test_not_attempted_is_reported():
    def todo(*args):
        raise NotImplementedError

    for check in (bn.check.bn_backward_spatial, bn.check.layer_norm_backward, bn.check.norm_after_step,
                  bn.check.variance_shift):
        with pytest.raises(CheckFailed, match="not attempted"):
            check(todo)
