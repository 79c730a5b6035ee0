"""The wave-2 Chapter 6 checks (teach/check/layers_practice.py): right answers pass, each typical
mistake is named, in both languages."""

import math

import pytest

import bncourse as bn
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
