"""The exercise check of Chapter 5, part 3: right answers pass, typical wrong ones get their own message."""

import math

import pytest
import torch

from bncourse.teach import check
from bncourse.teach.check import CheckFailed


def solution(weights, x, y, i, lr, *, stepped=None, sign=-1.0, total=False, inplace=False):
    """Definition 2.1 written independently of the check (manual chain of matmuls, autograd)."""
    stepped = range(i) if stepped is None else stepped

    def loss(ws):
        out = x
        for w in ws:
            out = out @ w.T
        return ((out - y) ** 2).sum() / (2 if total else 2 * len(x))

    ws = [w.clone().requires_grad_() for w in weights]
    grads = torch.autograd.grad(loss(ws), ws)
    moved = [(w + sign * lr * g if j in stepped else w).detach()
             for j, (w, g) in enumerate(zip(ws, grads, strict=True))]
    if inplace:
        for w, m in zip(weights, moved, strict=True):
            w.copy_(m)
    moved[i].requires_grad_()
    g, g2 = grads[i], torch.autograd.grad(loss(moved), moved[i])[0]
    return (g - g2).norm().item(), ((g * g2).sum() / (g.norm() * g2.norm())).item()


def test_gradient_ics_accepts_the_reference(capsys):
    check.gradient_ics(solution)
    assert "✔ gradient_ics: correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda w, x, y, i, lr: solution(w, x, y, i, lr, stepped=range(i + 1)), "stepped W_i itself"),
    (lambda w, x, y, i, lr: solution(w, x, y, i, lr, stepped=range(len(w))),
     "stepped W_i itself|stepped every layer"),
    (lambda w, x, y, i, lr: solution(w, x, y, i, lr, stepped=range(i + 1, len(w))),
     "layers after W_i"),
    (lambda w, x, y, i, lr: solution(w, x, y, i, lr, stepped=range(i - 1)), "one layer too few"),
    (lambda w, x, y, i, lr: solution(w, x, y, i, lr, sign=1.0), "uphill"),
    (lambda w, x, y, i, lr: solution(w, x, y, i, lr, total=True), "mean over the n examples"),
    (lambda w, x, y, i, lr: solution(w, x, y, i, lr)[::-1], "swapped"),
    (lambda w, x, y, i, lr: (solution(w, x, y, i, lr)[0], math.acos(solution(w, x, y, i, lr)[1])),
     "angle in radians"),
    (lambda w, x, y, i, lr: (solution(w, x, y, i, lr)[0] ** 2, solution(w, x, y, i, lr)[1]),
     "squared"),
    (lambda w, x, y, i, lr: solution(w, x, y, i, lr, inplace=True), "in place"),
    (lambda w, x, y, i, lr: solution(w, x, y, i, lr)[0], "a pair"),
    (lambda w, x, y, i, lr: (1.0, 0.5), "expected \\(l2, cos\\)"),
])
def test_gradient_ics_names_the_mistake(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.gradient_ics(wrong)


def test_gradient_ics_says_when_not_attempted():
    def todo(*args):
        raise NotImplementedError

    with pytest.raises(CheckFailed, match="not attempted"):
        check.gradient_ics(todo)


@pytest.mark.parametrize("wrong, message", [
    (lambda w, x, y, i, lr: solution(w, x, y, i, lr, sign=1.0), "往上坡走了"),
    (lambda w, x, y, i, lr: solution(w, x, y, i, lr)[::-1], "颠倒了"),
    (lambda w, x, y, i, lr: solution(w, x, y, i, lr)[0], "应返回一对数"),
])
def test_gradient_ics_speaks_chinese(wrong, message, monkeypatch, capsys):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed, match=message):
        check.gradient_ics(wrong)
    check.gradient_ics(solution)
    assert "✔ gradient_ics：正确" in capsys.readouterr().out
