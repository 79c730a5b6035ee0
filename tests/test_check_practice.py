"""The Chapter 6 exercise checks: right answers pass, each typical mistake is named."""

import math

import pytest
import torch
from torch import nn

import bncourse as bn
from bncourse.lab import weight_decay
from bncourse.teach.check import CheckFailed

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


def test_my_batch_norm_refuses_the_package_layer():
    with pytest.raises(CheckFailed, match="my_batch_norm: write your own: your function calls bncourse"):
        bn.check.my_batch_norm(bn.nn.BatchNorm1d)


def test_batch_norm_function_refuses_torch_in_forward_or_backward():
    class TorchForward(make_function()):
        @staticmethod
        def forward(ctx, x, gamma, beta, eps):
            make_function().forward(ctx, x, gamma, beta, eps)
            return torch.nn.functional.batch_norm(x, None, None, gamma, beta, True, 0.0, eps)

    class AutogradBackward(make_function()):
        @staticmethod
        def backward(ctx, dout):
            x_hat, gamma, inv_std = ctx.saved_tensors
            x = (x_hat / inv_std).detach().requires_grad_(True)
            with torch.enable_grad():
                out = torch.batch_norm(x, gamma, None, None, None, True, 0.0, 1e-3, False)
            return torch.autograd.grad(out, x, dout)[0], (dout * x_hat).sum(0), dout.sum(0), None

    for cheat in (TorchForward, AutogradBackward):
        with pytest.raises(CheckFailed, match="batch_norm_function: write your own: your function calls "
                                              "(torch.nn.functional.batch_norm|torch.batch_norm)"):
            bn.check.batch_norm_function(cheat)


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


def test_bn_backward_spatial_refuses_the_kernels_and_autograd():
    def kernel(dout, x, gamma, eps):
        _, cache = bn.functional.batch_norm_forward(x, gamma, None, eps)
        return bn.functional.batch_norm_backward(dout, cache)

    def by_autograd(dout, x, gamma, eps):
        x, gamma = x.requires_grad_(True), gamma.requires_grad_(True)
        x_hat = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(x.var((0, 2, 3), keepdim=True,
                                                                          correction=0) + eps)
        out = x_hat * gamma.reshape(1, -1, 1, 1)
        dx, dgamma = torch.autograd.grad(out, (x, gamma), dout)
        return dx, dgamma, dout.sum((0, 2, 3))

    for cheat, used in ((kernel, "bncourse.kernels"), (by_autograd, "torch.autograd.grad")):
        with pytest.raises(CheckFailed, match=f"bn_backward_spatial: write your own: your function "
                                              f"calls {used}"):
            bn.check.bn_backward_spatial(cheat)


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


def test_layer_norm_backward_refuses_torch_layer_norm_and_autograd():
    def by_torch(dout, x, gamma, eps):
        x, gamma = x.requires_grad_(True), gamma.requires_grad_(True)
        out = torch.nn.functional.layer_norm(x, x.shape[1:], gamma, None, eps)
        dx, dgamma = torch.autograd.grad(out, (x, gamma), dout)
        return dx, dgamma, dout.sum(0)

    with pytest.raises(CheckFailed, match="layer_norm_backward: write your own: your function calls "
                                          "torch.nn.functional.layer_norm"):
        bn.check.layer_norm_backward(by_torch)


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




def test_not_attempted_is_reported():
    def todo(*args):
        raise NotImplementedError

    for check in (bn.check.bn_backward_spatial, bn.check.layer_norm_backward):
        with pytest.raises(CheckFailed, match="not attempted"):
            check(todo)


# ---- fold_bn and relu_threshold ---------------------------------------------------------------


def fold(w, mean, var, gamma, beta, eps, mistake=None):
    std = torch.sqrt(var + (0.0 if mistake == "no eps" else eps))
    scale = gamma / std
    if mistake == "input channels":
        return w * scale.reshape(1, -1, 1, 1), beta - mean * scale
    bias = beta if mistake == "no mean" else beta - mean * scale
    return w * scale.reshape(-1, 1, 1, 1), bias


def test_fold_bn():
    bn.check.fold_bn(fold)
    with pytest.raises(CheckFailed, match="fold_bn: write your own: your function calls "
                                          "torch.nn.utils.fusion"):
        bn.check.fold_bn(lambda w, mean, var, gamma, beta, eps: torch.nn.utils.fusion.fuse_conv_bn_weights(
            w, None, mean, var, eps, gamma, beta))
    for mistake, message in (("no eps", "eps is missing"), ("no mean", "running mean is missing"),
                             ("input channels", "OUTPUT channel")):
        with pytest.raises(CheckFailed, match=message):
            bn.check.fold_bn(lambda *a, m=mistake: fold(*a, mistake=m))


def test_relu_threshold():
    bn.check.relu_threshold(lambda m, v, g, b, eps: m - b * torch.sqrt(v + eps) / g)
    cases = [
        (lambda m, v, g, b, eps: m - b * torch.sqrt(v) / g, "eps is missing"),
        (lambda m, v, g, b, eps: m + b * torch.sqrt(v + eps) / g, "sign is wrong"),
        (lambda m, v, g, b, eps: m - b * torch.sqrt(v + eps) / g.abs(), "\\|gamma\\|"),
        (lambda m, v, g, b, eps: -b / g, "normalized units"),
    ]
    for fn, message in cases:
        with pytest.raises(CheckFailed, match=message):
            bn.check.relu_threshold(fn)


# ---- weight_angle -----------------------------------------------------------------------------


def test_weight_angle():
    bn.check.weight_angle(weight_decay.angle)

    def naive(a, b, dtype=None, degrees=False):
        a, b = a.flatten(), b.flatten()
        if dtype is not None:
            a, b = a.to(dtype), b.to(dtype)
        angle = torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1)).item()
        return math.degrees(angle) if degrees else angle

    with pytest.raises(CheckFailed, match="float32 rounds"):
        bn.check.weight_angle(lambda a, b: naive(a, b, torch.float32))
    with pytest.raises(CheckFailed, match="degrees"):
        bn.check.weight_angle(lambda a, b: naive(a, b, torch.float64, degrees=True))
    bn.check.weight_angle(lambda a, b: naive(a, b, torch.float64))
