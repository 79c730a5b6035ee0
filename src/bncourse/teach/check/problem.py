"""Exercise checks of Chapter 1, the problem: the largest stable rate of an off-centre feature
(derive), and a gradient-descent fit that diverged when one feature's units changed (diagnose)."""

from __future__ import annotations

import math

import torch

from ...lab.device import generator
from .core import WRITE_YOUR_OWN, CheckFailed, call, passed, say

__all__ = ["fixed_fit", "largest_stable_lr"]

# Closed-form shortcuts that would skip the thinking each exercise asks for (see core.WRITE_YOUR_OWN).
EIGEN = tuple(f"torch.linalg.{n}" for n in ("eigvalsh", "eigh", "eig", "eigvals", "svdvals", "svd",
                                             "matrix_norm", "norm", "cond")) + ("numpy.linalg",
                                                                                 "scipy.linalg")
SOLVERS = tuple(f"torch.linalg.{n}" for n in ("lstsq", "solve", "inv", "pinv", "solve_ex", "inv_ex")) + (
    "numpy.linalg", "scipy.linalg", "sklearn.linear_model", "bncourse.lab.landscape")
WRITE_YOUR_OWN["largest_stable_lr"] = ("bncourse.lab.landscape", *EIGEN)
WRITE_YOUR_OWN["fixed_fit"] = SOLVERS


def _number(value, name: str) -> float:
    """The learner's result as one float, or a failure that says what came back."""
    if value is None:
        raise CheckFailed(say(en=f"{name}: the function returned None; did you forget `return`?",
                              zh=f"{name}：函数返回了 None；是不是忘了 `return`？"))
    try:
        return float(torch.as_tensor(value).reshape(()))
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckFailed(say(en=f"{name}: return one number, got {value!r}",
                              zh=f"{name}：请返回一个数，得到的是 {value!r}")) from e


def _hessian(mu: float, sigma: float) -> torch.Tensor:
    """The Hessian of L(w, b) for one feature with mean ``mu`` and biased std ``sigma``."""
    return torch.tensor([[mu * mu + sigma * sigma, mu], [mu, 1.0]], dtype=torch.float64)


# (mu, sigma): off-centre first (every typical mistake gives a different number there), then
# centred wide and narrow, a negative mean, far off-centre, and mu^2 + sigma^2 below 1
_MOMENTS = ((2.0, 1.0), (0.0, 3.0), (-4.0, 0.3), (0.0, 0.5), (10.0, 2.5), (0.7, 0.05))


def largest_stable_lr(fn) -> None:
    """Check ``fn(mu, sigma) -> float``: ``2 / lambda_max`` of the Hessian of ``L(w, b)`` for one
    feature with mean ``mu``, biased standard deviation ``sigma``, and a bias."""
    name = "largest_stable_lr"
    for mu, sigma in _MOMENTS:
        lam_min, lam_max = torch.linalg.eigvalsh(_hessian(mu, sigma)).tolist()
        ref = 2 / lam_max
        got = _number(call(fn, mu, sigma, name=name), name)
        if math.isclose(got, ref, rel_tol=1e-6):
            continue
        second, trace = mu * mu + sigma * sigma, 1 + mu * mu + sigma * sigma
        covariance = torch.linalg.eigvalsh(_hessian(0.0, sigma) + torch.tensor(
            [[0.0, mu], [mu, 0.0]], dtype=torch.float64))[-1].item()
        wrong = [
            (1 / lam_max, say(
                en="that is 1/lambda_max, half the limit: the factor 1 - lr * lambda only has to stay "
                   "above -1, so the limit is 2/lambda_max",
                zh="这是 1/lambda_max，只有极限的一半：因子 1 - lr * lambda 只需大于 -1，"
                   "所以极限是 2/lambda_max")),
            (2 / lam_min, say(
                en="you used the smaller eigenvalue; the steeper direction (lambda_max) blows up first",
                zh="你用了较小的特征值；先发散的是更陡的方向（lambda_max）")),
            *((c, say(
                en="you used a diagonal entry of the Hessian (the curvature of w alone, the mean of "
                   "x^2 = mu^2 + sigma^2, or of b alone, 1) and left out the off-diagonal mu, which "
                   "couples w and b; with mu != 0 the largest eigenvalue exceeds both diagonal entries",
                zh="你用了海森矩阵的对角元（w 自身的曲率，即 x^2 的均值 mu^2 + sigma^2，或 b 自身的曲率 1），"
                   "漏掉了把 w 和 b 耦合起来的非对角元 mu；mu 不为 0 时，最大特征值比两个对角元都大"))
              for c in (2 / second, 2 / max(second, 1.0))),
            *((c, say(
                en="that is the limit of a centred feature: the mean matters, because the feature "
                   "enters the Hessian through the mean of x^2 = mu^2 + sigma^2 and couples to the "
                   "bias through mu",
                zh="这是中心化特征的极限：均值也起作用，因为特征通过 x^2 的均值 mu^2 + sigma^2 进入海森矩阵，"
                   "并通过 mu 与偏置耦合"))
              for c in (2 / (sigma * sigma), 2 / max(sigma * sigma, 1.0))),
            (2 / trace, say(
                en="you used the trace 1 + mu^2 + sigma^2, the sum of both eigenvalues; lambda_max is "
                   "(t + sqrt(t^2 - 4 det)) / 2 with det = sigma^2",
                zh="你用了迹 1 + mu^2 + sigma^2，即两个特征值之和；"
                   "lambda_max 是 (t + sqrt(t^2 - 4 det)) / 2，其中 det = sigma^2")),
            (2 / covariance, say(
                en="you put the variance sigma^2 where the Hessian has the mean of x^2, mu^2 + sigma^2: "
                   "the Hessian is D^T D / n, uncentred",
                zh="你在海森矩阵该放 x^2 均值 mu^2 + sigma^2 的位置放了方差 sigma^2：海森矩阵是未中心化的 "
                   "D^T D / n")),
        ]
        where = say(en=f"mu = {mu:g}, sigma = {sigma:g}: expected {ref:.6g}, got {got:.6g}",
                    zh=f"mu = {mu:g}，sigma = {sigma:g}：应为 {ref:.6g}，得到 {got:.6g}")
        for candidate, hint in wrong:
            if math.isclose(got, candidate, rel_tol=1e-6):
                raise CheckFailed(f"{name}: {hint} ({where})")
        raise CheckFailed(say(
            en=f"{name}: {where}. Write the Hessian of L(w, b) for this feature (its entries are means "
               f"over the examples: of x^2, of x, and of 1), then its largest eigenvalue from the trace "
               f"and the determinant",
            zh=f"{name}：{where}。先写出这个特征下 L(w, b) 的海森矩阵"
               f"（各元素是对样本求的均值：x^2 的、x 的和 1 的），再由迹和行列式求它的最大特征值"))
    passed(name, say(en=f"2 / lambda_max for {len(_MOMENTS)} pairs (mu, sigma)",
                     zh=f"{len(_MOMENTS)} 组 (mu, sigma) 的 2 / lambda_max 都对"))


STEPS = 200  # the step budget of buggy_fit, and of the fix


def _fit_cases(seed: int):
    """Fresh problems with features on very different scales (means small beside the scales)."""
    gen = generator(seed)
    for n, scales in ((60, (1.0, 30.0)), (120, (0.05, 2.0, 40.0)), (80, (300.0, 1.0, 0.2, 8.0))):
        scales = torch.tensor(scales, dtype=torch.float64)
        d = len(scales)
        means = (torch.rand(d, generator=gen, dtype=torch.float64) - 0.5) * scales
        x = torch.randn(n, d, generator=gen, dtype=torch.float64) * scales + means
        w = torch.randn(d, generator=gen, dtype=torch.float64) / scales
        y = x @ w + 0.5 + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
        yield x, y


def _loss(x, y, w, b) -> float:
    return ((x @ w + b - y) ** 2).mean().item() / 2


def fixed_fit(fn) -> None:
    """Check ``fn(x, y) -> (w, b)``: the same model as ``buggy_fit``, fitted by its 200 steps of
    gradient descent on features of any scales, within a millionth of the least-squares minimum's
    loss gap (from ``w = 0, b = 0``), in the original features' units."""
    name = "fixed_fit"
    for x, y in _fit_cases(21):
        n, d = x.shape
        design = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)
        theta = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
        w_star, b_star = theta[:d], theta[d]
        best, start = _loss(x, y, w_star, b_star), _loss(x, y, torch.zeros(d, dtype=x.dtype), 0.0)
        out = call(fn, x.clone(), y.clone(), name=name)
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise CheckFailed(say(en=f"{name}: return the pair (w, b), as buggy_fit does, got "
                                     f"{type(out).__name__}",
                                  zh=f"{name}：请像 buggy_fit 一样返回 (w, b)，"
                                     f"得到的是 {type(out).__name__}"))
        if out[0] is None or out[1] is None:
            raise CheckFailed(say(en=f"{name}: w or b is None; did you forget `return`?",
                                  zh=f"{name}：w 或 b 是 None；是不是忘了 `return`？"))
        w = torch.as_tensor(out[0]).to(torch.float64)
        b = torch.as_tensor(out[1]).to(torch.float64)
        if w.shape != (d,) or b.numel() != 1:
            raise CheckFailed(say(en=f"{name}: expected w of shape ({d},) and one number b, got shapes "
                                     f"{tuple(w.shape)} and {tuple(b.shape)}",
                                  zh=f"{name}：w 的形状应为 ({d},)，b 应是一个数，得到的形状是 "
                                     f"{tuple(w.shape)} 和 {tuple(b.shape)}"))
        b = b.reshape(())
        scales = x.std(0, correction=0)
        kappa = torch.linalg.cond(design.T @ design / n).item()
        where = say(en=f"features with standard deviations {[round(s, 2) for s in scales.tolist()]}",
                    zh=f"各特征的标准差为 {[round(s, 2) for s in scales.tolist()]}")
        if not (torch.isfinite(w).all() and torch.isfinite(b)):
            raise CheckFailed(say(
                en=f"{name}: it still diverges ({where}): the feature with the largest scale makes "
                   f"lambda_max at least the mean of its square, and any rate above 2/lambda_max "
                   f"blows up",
                zh=f"{name}：仍然发散（{where}）：尺度最大的特征使 lambda_max 至少等于它平方的均值，"
                   f"学习率一旦超过 2/lambda_max 就会爆炸"))
        gap = (_loss(x, y, w, b) - best) / (start - best)
        if gap <= 1e-6:
            continue
        scaled = x / scales
        if math.isclose(_loss(scaled, y, w, b), best, rel_tol=1e-3) or math.isclose(
                _loss((x - x.mean(0)) / scales, y, w, b), best, rel_tol=1e-3):
            raise CheckFailed(say(
                en=f"{name}: your weights fit the rescaled features, not the original ones ({where}): "
                   f"if z = (x - m) / s, then z @ w + b = x @ (w / s) + b - m @ (w / s); return those",
                zh=f"{name}：你的权重拟合的是缩放后的特征，而不是原始特征（{where}）：若 z = (x - m) / s，"
                   f"则 z @ w + b = x @ (w / s) + b - m @ (w / s)；请返回这两个量"))
        if gap <= 1:
            raise CheckFailed(say(
                en=f"{name}: it no longer diverges, but after {STEPS} steps {gap:.1%} of the loss it "
                   f"started with above the minimum remains ({where}). A rate small enough for "
                   f"the steep direction crawls along the flat ones: kappa is {kappa:.3g} here, and "
                   f"the steps grow with kappa. Lowering the rate cannot fix both; change the scales "
                   f"the descent sees, and map the weights back",
                zh=f"{name}：不再发散了，但 {STEPS} 步后，起点时高出最小值的那部分损失"
                   f"仍剩 {gap:.1%}（{where}）。"
                   f"小到让陡峭方向稳定的学习率，在平坦方向上只能爬行：这里 kappa 为 {kappa:.3g}，"
                   f"而步数随 kappa 增长。只降低学习率无法兼顾两者；改变梯度下降看到的特征尺度，"
                   f"再把权重换算回来"))
        raise CheckFailed(say(
            en=f"{name}: the fit is finite but its loss is {_loss(x, y, w, b):.4g}, above the "
               f"minimum's {best:.4g} ({where}); fit the same model, x @ w + b, in the original units",
            zh=f"{name}：结果有限，但损失为 {_loss(x, y, w, b):.4g}，高于最小值 {best:.4g}（{where}）；"
               f"请在原始单位下拟合同一个模型 x @ w + b"))
    passed(name, say(en="at the minimum on 3 new problems, features on scales from 0.05 to 300",
                     zh="在 3 个新问题上都到达最小值，特征尺度从 0.05 到 300"))
