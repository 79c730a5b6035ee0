"""Chapter 7's exercise checks: a right answer passes, each typical mistake is named."""

import copy

import pytest
import torch

import bncourse as bn
from bncourse.teach.check import CheckFailed


def predict(shape, passes, bytes_per_value, gbps):
    values = 1
    for s in shape:
        values *= s
    return passes * values * bytes_per_value / (gbps * 1e9) * 1e3


def test_predict_ms_passes_and_names_mistakes(capsys):
    bn.check.predict_ms(predict)
    assert "predict_ms: correct" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="seconds instead of milliseconds"):
        bn.check.predict_ms(lambda *a: predict(*a) / 1e3)
    with pytest.raises(CheckFailed, match="bits instead of bytes"):
        bn.check.predict_ms(lambda *a: predict(*a) * 8)
    with pytest.raises(CheckFailed, match="values instead of bytes"):
        bn.check.predict_ms(lambda s, p, b, g: predict(s, p, 1, g))


def fold(linear, batch_norm):
    folded = copy.deepcopy(linear)
    scale = torch.rsqrt(batch_norm.running_var + batch_norm.eps)
    if batch_norm.weight is not None:
        scale = scale * batch_norm.weight
    with torch.no_grad():
        folded.weight.mul_(scale[:, None])
        folded.bias.copy_((linear.bias - batch_norm.running_mean) * scale)
        if batch_norm.bias is not None:
            folded.bias.add_(batch_norm.bias)
    return folded


def test_fold_linear_bn_passes_and_names_mistakes(capsys):
    bn.check.fold_linear_bn(fold)
    assert "fold_linear_bn: correct" in capsys.readouterr().out

    def no_eps(linear, batch_norm):
        eps = batch_norm.eps
        batch_norm.eps = 0.0
        try:
            return fold(linear, batch_norm)
        finally:
            batch_norm.eps = eps

    def in_place(linear, batch_norm):
        with torch.no_grad():
            linear.weight.mul_(1.0 + 1e-3)
        return fold(linear, batch_norm)

    with pytest.raises(CheckFailed, match="eps is missing"):
        bn.check.fold_linear_bn(no_eps)
    with pytest.raises(CheckFailed, match="original Linear was changed"):
        bn.check.fold_linear_bn(in_place)
    with pytest.raises(CheckFailed, match="expected an nn.Linear"):
        bn.check.fold_linear_bn(lambda lin, norm: None)
