"""Exercise checks of Chapter 5, part 3: internal covariate shift as Santurkar et al. define it."""

from __future__ import annotations

import math

import torch

from ...lab.device import generator
from .benefits import _number
from .core import CheckFailed, call, passed

__all__ = ["gradient_ics"]


def _loss(ws: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, total: bool = False):
    out = x
    for w in ws:
        out = out @ w.T
    sq = ((out - y) ** 2).sum()
    return sq / 2 if total else sq / (2 * len(x))


def _variant(ws, x, y, i, lr, *, stepped=None, sign=-1.0, total=False) -> tuple[float, float]:
    """``(||G - G'||, cos)`` for layer ``i``, with the layers in ``stepped`` (default: those before
    ``i``) moved by ``sign * lr * grad`` before ``G'`` is taken."""
    stepped = range(i) if stepped is None else stepped
    ws = [w.detach().clone().requires_grad_() for w in ws]
    grads = torch.autograd.grad(_loss(ws, x, y, total), ws)
    moved = [w.detach() + sign * lr * g if j in stepped else w.detach()
             for j, (w, g) in enumerate(zip(ws, grads, strict=True))]
    moved[i] = moved[i].clone().requires_grad_()
    g, g2 = grads[i], torch.autograd.grad(_loss(moved, x, y, total), moved[i])[0]
    return (g - g2).norm().item(), ((g * g2).sum() / (g.norm() * g2.norm())).item()


def _pair(got, name: str) -> tuple[float, float]:
    if not isinstance(got, tuple | list) or len(got) != 2:
        raise CheckFailed(f"{name}: return a pair (l2, cos), got {type(got).__name__}")
    return tuple(_number(v, name, "two numbers (floats)") for v in got)


def gradient_ics(fn) -> None:
    """Check ``fn(weights, x, y, i, lr) -> (l2, cos)``: Definition 2.1 of Santurkar et al. for layer
    ``i`` (from 0) of the deep linear network ``x @ W_0.T @ ... @ W_{k-1}.T`` with loss
    ``||f(x) - y||^2 / (2n)``."""
    name = "gradient_ics"
    cases = [(0, 3, 1, 0.1), (1, 4, 2, 0.05), (2, 5, 4, 0.2), (3, 5, 3, 0.02)]  # seed, k, i, lr
    for seed, k, i, lr in cases:
        gen = generator(seed)
        n, d = 20, 4
        x = torch.randn(n, d, generator=gen, dtype=torch.float64)
        y = x @ torch.randn(d, d, generator=gen, dtype=torch.float64).T
        ws = [torch.eye(d, dtype=torch.float64) + 0.5 * torch.randn(d, d, generator=gen,
                                                                    dtype=torch.float64)
              for _ in range(k)]
        originals = [w.clone() for w in ws]
        got = _pair(call(fn, ws, x.clone(), y.clone(), i, lr, name=name), name)
        if any(not torch.equal(w, o) for w, o in zip(ws, originals, strict=True)):
            raise CheckFailed(f"{name}: the function changed the weights in place; leave them as "
                              f"they were (step copies)")
        ref = _variant(ws, x, y, i, lr)
        where = f"(layer i = {i} of {k}, lr = {lr})"

        def close(a, b):
            return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)

        if close(got[0], ref[0]) and close(got[1], ref[1]):
            continue
        if close(got[0], ref[1]) and close(got[1], ref[0]):
            raise CheckFailed(f"{name}: return (l2, cos) in that order; you swapped them {where}")
        if close(got[0], ref[0]):
            if close(got[1], math.acos(max(-1.0, min(1.0, ref[1])))):
                hint = "that is the angle in radians; return its cosine"
            else:
                hint = (f"the l2 difference is right but the cosine is not (expected "
                        f"{ref[1]:.6g}): (G * G').sum() / (||G|| ||G'||)")
            raise CheckFailed(f"{name}: {hint} {where}")
        mistakes = [
            (_variant(ws, x, y, i, lr, stepped=range(i + 1)),
             "you stepped W_i itself too: G' is the gradient at the layer's old weights, after "
             "only the layers before it (0 to i - 1) took their step"),
            (_variant(ws, x, y, i, lr, stepped=range(k)),
             "you stepped every layer: G' is taken after only the layers before W_i step"),
            (_variant(ws, x, y, i, lr, stepped=range(i + 1, k)),
             "you stepped the layers after W_i; Definition 2.1 steps the ones before it"),
            (_variant(ws, x, y, i, lr, stepped=range(i - 1)),
             "one layer too few took its step: every layer before W_i steps, indices 0 to i - 1"),
            (_variant(ws, x, y, i, lr, sign=1.0), "you stepped uphill: an SGD step is w - lr * grad"),
            (_variant(ws, x, y, i, lr, total=True),
             "the loss is a mean over the n examples, ||f(x) - y||^2 / (2n); your gradients are "
             "those of the sum"),
        ]
        for (l2, cos), hint in mistakes:
            if close(got[0], l2) and close(got[1], cos):
                raise CheckFailed(f"{name}: {hint} {where}")
        if close(got[0], ref[0] ** 2):
            raise CheckFailed(f"{name}: the l2 difference is squared; take the square root {where}")
        raise CheckFailed(f"{name}: expected (l2, cos) = ({ref[0]:.6g}, {ref[1]:.6g}), got "
                          f"({got[0]:.6g}, {got[1]:.6g}) {where}")
    passed(name, "4 deep linear networks of 3 to 5 layers, inner and last layers")
