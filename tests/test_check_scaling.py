"""Chapter 2's checks pass the reference, name each typical mistake, and flag unattempted work."""

import pytest
import torch

from bncourse.teach import check
from bncourse.teach.check import CheckFailed


def std_ok(x):
    std = x.std(0, unbiased=False)
    return (x - x.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))


def test_standardize_passes_the_reference(capsys):
    check.standardize(std_ok)
    assert "✔ standardize: correct" in capsys.readouterr().out


def _inplace(x):
    z = std_ok(x)
    x.copy_(z)
    return z


def _only_centred_when_constant(x):
    std = x.std(0, unbiased=False)
    return x - x.mean(0) if (std == 0).any() else std_ok(x)


@pytest.mark.parametrize("wrong, message", [
    (lambda x: (x - x.mean(0)) / x.std(0), "unbiased standard deviation"),
    (lambda x: (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True, unbiased=False), "each example"),
    (lambda x: (x - x.mean()) / x.std(), "whole matrix"),
    (lambda x: (x - x.mean()) / x.std(unbiased=False), "whole matrix"),
    (lambda x: x - x.mean(0), "did not divide"),
    (lambda x: x / x.std(0, unbiased=False), "did not subtract the mean"),
    (lambda x: (x - x.mean(0)) / x.var(0, unbiased=False), "divided by the variance"),
    (lambda x: (x - x.amin(0)) / (x.amax(0) - x.amin(0)), "min-max"),
    (lambda x: (x - x.mean(0)) / x.std(0, unbiased=False), "constant feature .* NaN"),
    (lambda x: (x - x.mean(0)) / (x.std(0, unbiased=False) + 1e-3), "added 0.001 to the standard"),
    (lambda x: (x - x.mean(0)) / (x.var(0, unbiased=False) + 1e-5).sqrt(), "sqrt\\(var \\+ 1e-05\\)"),
    (lambda x: (x - x.mean(0)) / 2, "centered correctly but divided by the wrong number"),
    (_only_centred_when_constant, "constant column is right"),
    (lambda x: std_ok(x) + 1, "mean 0"),
    (_inplace, "in place"),
    (lambda x: std_ok(x)[:, :1], "expected a result of shape"),
    (lambda x: None, "returned None"),
])
def test_standardize_names_each_mistake(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.standardize(wrong)


def split_ok(x_train, x_test):
    mean, std = x_train.mean(0), x_train.std(0, unbiased=False)
    return (x_train - mean) / std, (x_test - mean) / std


def test_standardize_split_passes_the_reference(capsys):
    check.standardize_split(split_ok)
    assert "✔ standardize_split: correct" in capsys.readouterr().out


def _both(x_train, x_test):
    return split_ok(torch.cat([x_train, x_test]), torch.cat([x_train, x_test]))[0].split(
        [len(x_train), len(x_test)])


@pytest.mark.parametrize("wrong, message", [
    (lambda a, b: (split_ok(a, b)[0], std_ok(b)), "test split's own statistics"),
    (lambda a, b: (split_ok(a, b)[0], b), "unscaled"),
    (lambda a, b: (split_ok(a, b)[0], split_ok(a, b)[1] * 2), "z_train is right, but z_test"),
    (_both, "train and test together"),
    (lambda a, b: split_ok(b, a)[::-1], "fitted the statistics on x_test"),
    (lambda a, b: ((a - a.mean(0)) / a.std(0), split_ok(a, b)[1]), "in z_train, .*unbiased"),
    (lambda a, b: (a, b), "z_train is not"),
    (lambda a, b: split_ok(a, b)[0], "return a pair"),
])
def test_standardize_split_names_each_mistake(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.standardize_split(wrong)


@pytest.mark.parametrize("name", ["standardize", "standardize_split"])
def test_not_attempted(name):
    def todo(*args):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="not attempted"):
        getattr(check, name)(todo)
