"""Exercise checks of Chapter 5, part 3: internal covariate shift as Santurkar et al. define it. Every
message comes in English and in Chinese (:func:`~bncourse.teach.check.core.say`)."""

from __future__ import annotations

import math

import torch

from ...lab.device import generator
from .benefits import _number
from .core import CheckFailed, call, passed, say

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
        raise CheckFailed(say(en=f"{name}: return a pair (l2, cos), got {type(got).__name__}",
                              zh=f"{name}：应返回一对数 (l2, cos)，得到的是 {type(got).__name__}"))
    kind = {"en": "two numbers (floats)", "zh": "两个数（float）"}
    return tuple(_number(v, name, kind) for v in got)


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
            raise CheckFailed(say(en=f"{name}: the function changed the weights in place; leave them "
                                     f"as they were (step copies)",
                                  zh=f"{name}：函数原地修改了权重；请保持它们不变（对副本走一步）"))
        ref = _variant(ws, x, y, i, lr)
        where = say(en=f"(layer i = {i} of {k}, lr = {lr})", zh=f"（{k} 层中的第 i = {i} 层，lr = {lr}）")

        def close(a, b):
            return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)

        if close(got[0], ref[0]) and close(got[1], ref[1]):
            continue
        if close(got[0], ref[1]) and close(got[1], ref[0]):
            raise CheckFailed(say(en=f"{name}: return (l2, cos) in that order; you swapped them {where}",
                                  zh=f"{name}：请按 (l2, cos) 的顺序返回；你把它们颠倒了{where}"))
        if close(got[0], ref[0]):
            if close(got[1], math.acos(max(-1.0, min(1.0, ref[1])))):
                hint = say(en="that is the angle in radians; return its cosine",
                           zh="这是以弧度表示的角度；请返回它的余弦")
            else:
                hint = say(en=f"the l2 difference is right but the cosine is not (expected "
                              f"{ref[1]:.6g}): (G * G').sum() / (||G|| ||G'||)",
                           zh=f"l2 差是对的，但余弦不对（应为 {ref[1]:.6g}）："
                              f"(G * G').sum() / (||G|| ||G'||)")
            raise CheckFailed(f"{name}: {hint} {where}")
        mistakes = [
            (_variant(ws, x, y, i, lr, stepped=range(i + 1)),
             say(en="you stepped W_i itself too: G' is the gradient at the layer's old weights, after "
                    "only the layers before it (0 to i - 1) took their step",
                 zh="你把 W_i 自己也更新了：G' 是该层旧权重处的梯度，只有它之前的层（0 到 i - 1）"
                    "走了一步")),
            (_variant(ws, x, y, i, lr, stepped=range(k)),
             say(en="you stepped every layer: G' is taken after only the layers before W_i step",
                 zh="你更新了所有层：G' 是在只有 W_i 之前的层走一步之后求的")),
            (_variant(ws, x, y, i, lr, stepped=range(i + 1, k)),
             say(en="you stepped the layers after W_i; Definition 2.1 steps the ones before it",
                 zh="你更新的是 W_i 之后的层；定义 2.1 更新的是它之前的层")),
            (_variant(ws, x, y, i, lr, stepped=range(i - 1)),
             say(en="one layer too few took its step: every layer before W_i steps, indices 0 to i - 1",
                 zh="少更新了一层：W_i 之前的每一层都要走一步，下标 0 到 i - 1")),
            (_variant(ws, x, y, i, lr, sign=1.0),
             say(en="you stepped uphill: an SGD step is w - lr * grad",
                 zh="你往上坡走了：随机梯度下降 (SGD) 的一步是 w - lr * grad")),
            (_variant(ws, x, y, i, lr, total=True),
             say(en="the loss is a mean over the n examples, ||f(x) - y||^2 / (2n); your gradients are "
                    "those of the sum",
                 zh="损失是对 n 个样本取平均，||f(x) - y||^2 / (2n)；你的梯度是求和形式的损失的梯度")),
        ]
        for (l2, cos), hint in mistakes:
            if close(got[0], l2) and close(got[1], cos):
                raise CheckFailed(f"{name}: {hint} {where}")
        if close(got[0], ref[0] ** 2):
            raise CheckFailed(say(en=f"{name}: the l2 difference is squared; take the square root {where}",
                                  zh=f"{name}：l2 差被平方了；请开平方根{where}"))
        raise CheckFailed(say(en=f"{name}: expected (l2, cos) = ({ref[0]:.6g}, {ref[1]:.6g}), got "
                                 f"({got[0]:.6g}, {got[1]:.6g}) {where}",
                              zh=f"{name}：(l2, cos) 应为 ({ref[0]:.6g}, {ref[1]:.6g})，得到 "
                                 f"({got[0]:.6g}, {got[1]:.6g}){where}"))
    passed(name, say(en="4 deep linear networks of 3 to 5 layers, inner and last layers",
                     zh="4 个 3 到 5 层的深度线性网络，中间层和最后一层"))
