"""The wave-2 Chapter 6 checks (teach/check/layers_practice.py): right answers pass, each typical
mistake is named, in both languages."""

import math
import re

import pytest
import torch
from torch import nn

import bncourse as bn
from bncourse.lab import weight_decay
from bncourse.teach.check import CheckFailed
from bncourse.teach.check.layers_practice import simulated_angle


def right(lr, wd, mu):
    return math.sqrt(2 * lr * wd / (1 + mu))


def test_the_run_settles_at_the_derived_angle():
    for lr, wd, mu in [(0.2, 0.01, 0.0), (0.1, 0.03, 0.9)]:
        assert math.isclose(simulated_angle(lr, wd, mu, seed=3), right(lr, wd, mu), rel_tol=0.015)


def test_angle_with_momentum_passes(capsys):
    bn.check.angle_with_momentum(right)
    assert "✔ angle_with_momentum: correct" in capsys.readouterr().out


def test_angle_with_momentum_accepts_a_simulation():
    # a learner may measure rather than derive: a run of the same SGD passes too
    bn.check.angle_with_momentum(lambda lr, wd, mu: simulated_angle(lr, wd, mu, seed=99, runs=16))


@pytest.mark.parametrize("fn, message", [
    (lambda lr, wd, mu: math.sqrt(2 * lr * wd), "without momentum"),
    (lambda lr, wd, mu: math.sqrt(2 * lr * wd / (1 - mu)), r"learning rate lr / \(1 - momentum\)"),
    (lambda lr, wd, mu: math.sqrt(2 * lr * wd / (1 - mu**2)), "cross terms"),
    (lambda lr, wd, mu: 2 * lr * wd / (1 + mu), "mean square"),
    (lambda lr, wd, mu: math.degrees(right(lr, wd, mu)), "degrees"),
    (lambda lr, wd, mu: math.sqrt(lr * wd / (1 + mu)), "sqrt\\(2 lr wd\\)"),
])
def test_angle_with_momentum_names_the_mistake(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.angle_with_momentum(fn)


def test_angle_with_momentum_speaks_chinese(monkeypatch, capsys):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed, match="没有动量时的平衡"):
        bn.check.angle_with_momentum(lambda lr, wd, mu: math.sqrt(2 * lr * wd))
    bn.check.angle_with_momentum(right)
    assert "正确" in capsys.readouterr().out


def test_angle_with_momentum_not_attempted_and_not_a_number():
    def stub(lr, wd, mu):
        raise NotImplementedError

    with pytest.raises(CheckFailed, match="not attempted"):
        bn.check.angle_with_momentum(stub)
    with pytest.raises(CheckFailed, match="expected a number"):
        bn.check.angle_with_momentum(lambda lr, wd, mu: None)


# ---- the messages of the other checks of pages 06a-06d, in Chinese ------------------------------

CJK = "[\u4e00-\u9fff]"


def spatial(dout, x, gamma, eps, dims=(0, 2, 3)):
    mean, var = x.mean(dims, keepdim=True), x.var(dims, keepdim=True, correction=0)
    inv_std = 1 / torch.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    g = dout * gamma.reshape(1, -1, 1, 1)
    dx = inv_std * (g - g.mean(dims, keepdim=True) - x_hat * (g * x_hat).mean(dims, keepdim=True))
    return dx, (dout * x_hat).sum((0, 2, 3)), dout.sum((0, 2, 3))


def layer_norm(dout, x, gamma, eps, unbiased=False):
    mean, var = x.mean(1, keepdim=True), x.var(1, keepdim=True, correction=int(unbiased))
    inv_std = 1 / torch.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    g = dout * gamma
    dx = inv_std * (g - g.mean(1, keepdim=True) - x_hat * (g * x_hat).mean(1, keepdim=True))
    return dx, (dout * x_hat).sum(0), dout.sum(0)


def fold(w, mean, var, gamma, beta, eps, no_eps=False):
    scale = gamma / torch.sqrt(var + (0.0 if no_eps else eps))
    return w * scale.reshape(-1, 1, 1, 1), beta - mean * scale


class NoCounter(nn.Module):
    def __init__(self, c, eps=1e-5, momentum=0.1):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))


@pytest.mark.parametrize("check, fn, chinese", [
    ("bn_backward_spatial", lambda d, x, g, e: spatial(d, x, g, e, dims=(2, 3)), "实例标准化"),
    ("layer_norm_backward", lambda d, x, g, e: layer_norm(d, x, g, e, unbiased=True), "无偏方差"),
    ("fold_bn", lambda *a: fold(*a, no_eps=True), "缺了 eps"),
    ("relu_threshold", lambda m, v, g, b, e: -b / g, "标准化后的单位"),
    ("weight_angle", lambda a, b: math.degrees(weight_decay.angle(a, b)), "度"),
    ("my_batch_norm", NoCounter, "num_batches_tracked"),
    ("batch_norm_function", int, "torch.autograd.Function 的子类"),
])
def test_the_checks_of_06a_to_06d_speak_chinese(monkeypatch, check, fn, chinese):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed, match=chinese) as failure:
        getattr(bn.check, check)(fn)
    assert re.search(CJK, str(failure.value))


def test_the_checks_of_06a_to_06d_pass_in_chinese(monkeypatch, capsys):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    bn.check.bn_backward_spatial(spatial)
    bn.check.layer_norm_backward(layer_norm)
    bn.check.fold_bn(fold)
    bn.check.weight_angle(weight_decay.angle)
    out = capsys.readouterr().out
    assert out.count("正确") == 4 and "correct" not in out
