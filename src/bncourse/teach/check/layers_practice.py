"""Exercise checks of Chapter 6 added in wave 2: the weight-decay balance with momentum.

The reference is a run: a scale-invariant weight (its gradient orthogonal to it, of size inversely
proportional to its norm, in a random direction each step) trained by PyTorch's SGD with momentum and
weight decay, its angle per step measured once the norm has settled.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ...lab.device import generator
from .core import CheckFailed, passed, run, say

__all__ = ["angle_with_momentum"]


def simulated_angle(lr: float, weight_decay: float, momentum: float, *, seed: int = 0, runs: int = 32,
                    dim: int = 32, steps: int = 2000) -> float:
    """Root mean square angle per step (radians) of scale-invariant weights trained by PyTorch's SGD,
    ``buf = momentum * buf + grad + weight_decay * w``, ``w -= lr * buf``, over the second half of
    ``steps`` steps, ``runs`` weights of ``dim`` entries at once. Each step's gradient points in a
    random direction orthogonal to ``w``, with norm ``1 / |w|`` (scale invariance)."""
    g = generator(seed)
    noise = torch.randn(steps, runs, dim, generator=g, dtype=torch.float64)
    w = torch.randn(runs, dim, generator=g, dtype=torch.float64)
    buf = torch.zeros_like(w)
    squares, count = torch.zeros(runs, dtype=torch.float64), 0
    for t in range(steps):
        norm = w.norm(dim=1, keepdim=True)
        u = noise[t] - (noise[t] * w).sum(1, keepdim=True) / norm**2 * w   # orthogonal to w
        grad = u / (u.norm(dim=1, keepdim=True) * norm)                     # |grad| = 1 / |w|
        buf = momentum * buf + grad + weight_decay * w
        new = w - lr * buf
        if t >= steps // 2:
            along = (new * w).sum(1) / norm[:, 0]
            across = (new - along[:, None] * w / norm).norm(dim=1)
            squares += torch.atan2(across, along) ** 2
            count += 1
        w = new
    return (squares / count).mean().sqrt().item()


def angle_with_momentum(fn: Callable) -> None:
    """Check ``fn(lr, weight_decay, momentum) -> angle``: the root mean square angle per step at which
    a scale-invariant weight settles under PyTorch's SGD with momentum and weight decay, against
    runs of that SGD at settings the page does not use."""
    name = "angle_with_momentum"
    cases = [(0.3, 0.02, 0.0), (0.1, 0.05, 0.9), (0.2, 0.02, 0.5), (0.5, 0.01, 0.95)]
    for seed, (lr, wd, mu) in enumerate(cases):
        what = f"lr = {lr}, weight_decay = {wd}, momentum = {mu}"
        value = run(fn, lr, wd, mu, name=name, what=what)
        try:
            got = float(value)
        except (TypeError, ValueError) as e:
            raise CheckFailed(say(
                en=f"{name}: expected a number (the angle in radians), got {type(value).__name__} ({what})",
                zh=f"{name}：应返回一个数（以弧度计的角度），得到的是 "
                   f"{type(value).__name__}（{what}）")) from e
        measured = simulated_angle(lr, wd, mu, seed=seed)
        if math.isfinite(got) and abs(got / measured - 1) < 0.03:
            continue
        base = 2 * lr * wd
        mistakes = [
            (math.degrees(measured), "the angle is in degrees; return radians",
             "角度用的是度；请返回弧度"),
            (base / (1 + mu), "this is the mean square of the angle; take the square root",
             "这是角度的均方；请开平方"),
            (math.sqrt(base / (1 - mu)) if mu else None,
             "momentum is treated as a learning rate lr / (1 - momentum) for the gradient too; but "
             "successive gradients point in unrelated directions, so their contributions to the step "
             "do not add up the way the decay's do",
             "把动量当成了对梯度同样适用的学习率 lr / (1 - momentum)；但相邻各步的梯度方向互不相关，"
             "它们对一步位移的贡献不会像衰减项那样逐步累加"),
            (math.sqrt(base) if mu else None,
             "this is the balance without momentum, sqrt(2 lr wd); momentum changes it: the decay "
             "accumulates in the momentum buffer, and so do the gradient's steps, differently",
             "这是没有动量时的平衡 sqrt(2 lr wd)；动量会改变它：衰减项在动量缓冲区中累积，"
             "梯度的各步也在其中累积，但方式不同"),
            (math.sqrt(base / (1 - mu**2)) if mu else None,
             "the size of the momentum buffer's gradient part, 1 / (1 - momentum^2), is right, but "
             "the decay's part grows too, by 1 / (1 - momentum), and the buffer's old gradients pull "
             "the weight's norm down (the cross terms <w_t, g_(t-k)>)",
             "动量缓冲区中梯度部分的大小 1 / (1 - momentum^2) 是对的，但衰减部分也增大了 "
             "1 / (1 - momentum) 倍，而且缓冲区里的旧梯度会使权重的范数变小（交叉项 <w_t, g_(t-k)>）"),
        ]
        for wrong, en, zh in mistakes:
            if wrong is not None and math.isfinite(got) and abs(got / wrong - 1) < 0.03:
                raise CheckFailed(say(en=f"{name}: {en} ({what})", zh=f"{name}：{zh}（{what}）"))
        raise CheckFailed(say(
            en=f"{name}: runs of SGD settle at {measured:.4g} rad per step (root mean square), your "
               f"function gives {got:.4g} ({what}); at momentum 0 it should give sqrt(2 lr wd)",
            zh=f"{name}：随机梯度下降 (SGD) 的实际运行稳定在每步 {measured:.4g} 弧度（均方根），你的函数给出 "
               f"{got:.4g}（{what}）；动量为 0 时它应等于 sqrt(2 lr wd)"))
    passed(name, say(en="as runs of SGD with momentum settle, within 3%",
                     zh="与带动量的随机梯度下降 (SGD) 实际运行的平衡一致，误差在 3% 以内"))
