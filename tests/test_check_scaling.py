"""Chapter 2's checks pass the reference, name each typical mistake (in both languages where a page
asks them), and flag unattempted work."""

import math

import pytest
import torch
from sklearn.preprocessing import StandardScaler

import bncourse as bn
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


@pytest.mark.parametrize("name", ["standardize", "fixed_predict"])
def test_not_attempted(name, served):
    def todo(*args):
        raise NotImplementedError()

    args = (served.model, served.split) if name == "fixed_predict" else ()
    with pytest.raises(CheckFailed, match="not attempted"):
        getattr(check, name)(todo, *args)


# divided_by_std: a predict exercise; any honest number in the range passes and hears the gap


@pytest.mark.parametrize("guess, how", [(1294.0, "within 25%"), (1.0, "1.3e\\+03 times below"),
                                        (40_000, "31 times above")])
def test_divided_by_std_passes_any_honest_prediction(guess, how, capsys):
    check.divided_by_std(guess, 1294.0)
    printed = capsys.readouterr().out
    assert max(len(line) for line in printed.splitlines()) <= 88  # wrapped to the page's column
    out = " ".join(printed.split())
    assert "✔ divided_by_std: correct" in out and "only centring removes" in out
    assert any(part in out for part in how.split("\\"))


@pytest.mark.parametrize("guess, message", [
    (None, "expected your prediction as a number"), ("big", "expected your prediction"),
    (True, "expected your prediction"), (math.nan, "expected your prediction"),
    (0.5, "outside"), (1e9, "outside"),
])
def test_divided_by_std_refuses_no_prediction(guess, message):
    with pytest.raises(CheckFailed, match=message):
        check.divided_by_std(guess, 1294.0)


# fixed_predict: a diagnose exercise, checked by what the fixed predictor does


class Served:
    """A logistic regression trained on standardized digits, as on the page."""

    def __init__(self):
        bn.seed_everything(0)
        self.split = bn.data.digits(seed=0)
        standardized, _ = bn.scaling.scale_split(self.split)
        self.model = bn.train(lambda: bn.models.mlp([64, 10]), standardized, 150, 1.0, seeds=[0],
                              progress=False).models[0]
        self.scaler = StandardScaler().fit(self.split.x_train.numpy())

    def classes(self, z):
        with torch.no_grad():
            return self.model.eval()(torch.as_tensor(z, dtype=torch.float32)).argmax(1)


@pytest.fixture(scope="module")
def served():
    return Served()


def test_fixed_predict_passes_the_reference(served, capsys):
    check.fixed_predict(lambda images: served.classes(served.scaler.transform(images.numpy())),
                        served.model, served.split)
    fitted = bn.scaling.fit_standard(served.split.x_train)
    check.fixed_predict(lambda images: served.classes(fitted(images)), served.model, served.split)
    assert capsys.readouterr().out.count("✔ fixed_predict: correct") == 2


def _leaky(served):
    both = StandardScaler().fit(torch.cat([served.split.x_train, served.split.x_test]).numpy())
    return lambda images: served.classes(both.transform(images.numpy()))


@pytest.mark.parametrize("wrong, message", [
    (lambda s: lambda images: s.classes(StandardScaler().fit_transform(images.numpy())),
     "its own statistics.*all zeros"),
    (lambda s: lambda images: s.classes(bn.scaling.standardize(images)), "raised ValueError.* of 1 image"),
    (_leaky, "training and test images together"),
    (lambda s: lambda images: s.classes(images), "raw pixels"),
    (lambda s: lambda images: s.classes(s.scaler.transform(images.numpy()) * 2),
     "classes differ from those"),
    (lambda s: lambda images: s.classes(s.scaler.transform(images.numpy()))[:1], "should give"),
    (lambda s: lambda images: None, "returned None"),
])
def test_fixed_predict_names_each_mistake(served, wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.fixed_predict(wrong(served), served.model, served.split)


def test_the_messages_speak_chinese(served, monkeypatch, capsys):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    check.divided_by_std(1000.0, 1294.0)
    assert "你预测1e+03，实测1.29e+03" in "".join(capsys.readouterr().out.split())
    with pytest.raises(CheckFailed, match="自己的统计量"):
        check.fixed_predict(lambda images: served.classes(StandardScaler().fit_transform(images.numpy())),
                            served.model, served.split)
    with pytest.raises(CheckFailed, match="请把你的预测写成一个数"):
        check.divided_by_std(None, 1294.0)
