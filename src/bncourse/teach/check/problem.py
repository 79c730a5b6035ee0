"""Exercise checks of Chapter 1, the problem: the least-squares gradient and its largest stable rate."""

from __future__ import annotations

import math

import torch

from ...lab.device import generator
from .core import CheckFailed, as_tensor, call, passed

__all__ = ["largest_stable_lr", "mse_gradient"]


def _cases(seed: int):
    """Feature matrices with unequal scales and non-zero means, so every mistake shows."""
    gen = generator(seed)
    for n, d in ((7, 1), (20, 2), (50, 5)):
        scales = 10 ** torch.linspace(-1, 1, d, dtype=torch.float64)
        means = torch.rand(d, generator=gen, dtype=torch.float64) * 4 - 1
        yield torch.randn(n, d, generator=gen, dtype=torch.float64) * scales + means


def _factor(got: torch.Tensor, ref: torch.Tensor) -> float | None:
    """``c`` if ``got == c * ref`` (to 1e-6), else None."""
    denom = (ref * ref).sum()
    if denom == 0:
        return None
    c = ((got * ref).sum() / denom).item()
    return c if torch.allclose(got, c * ref, rtol=1e-6, atol=1e-9) else None


def _gradient_hint(c: float | None, n: int, what: str) -> str | None:
    """What a gradient ``c`` times the right one says about the mistake (None: no known one)."""
    if c is None:
        return None
    for value, hint in (
        (-1, "it points uphill: the residual must be prediction - target, (x @ w + b) - y"),
        (n, "it is n times too large: the loss has a mean over the n examples, so divide by n"),
        (-n, "its sign is flipped and it is n times too large (sum instead of mean)"),
        (2, "it is twice too large: the loss carries a factor 1/2, which cancels the 2 of the square"),
        (0.5, "it is half the right size: the 1/2 of the loss cancels against the 2 of the square"),
        (0, "it is zero"),
    ):
        if math.isclose(c, value, rel_tol=1e-6, abs_tol=1e-9):
            return f"{what}: {hint}"
    return None


def mse_gradient(fn) -> None:
    """Check ``fn(w, b, x, y) -> (dw, db)``, the gradient of ``L = 1/(2n) sum (x_i.w + b - y_i)^2``."""
    name = "mse_gradient"
    for seed, x in enumerate(_cases(1)):
        n, d = x.shape
        gen = generator(100 + seed)
        w = torch.randn(d, generator=gen, dtype=torch.float64)
        b = torch.tensor(0.7 + seed, dtype=torch.float64)
        y = torch.randn(n, generator=gen, dtype=torch.float64) * 3
        args = (w.clone(), b.clone(), x.clone(), y.clone())
        out = call(fn, *args, name=name)
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise CheckFailed(f"{name}: return a pair (dw, db), got {type(out).__name__}")
        dw = as_tensor(out[0], f"{name} (dw)", w)
        db = as_tensor(out[1], f"{name} (db)", b)
        r = x @ w + b - y
        ref_dw, ref_db = x.T @ r / n, r.mean()
        ok_dw = torch.allclose(dw, ref_dw, rtol=1e-6, atol=1e-9)
        ok_db = torch.allclose(db, ref_db, rtol=1e-6, atol=1e-9)
        if ok_dw and ok_db:
            continue
        where = f"on x of shape {tuple(x.shape)}"
        if not ok_dw:
            if torch.allclose(dw, x.T @ (x @ w - y) / n, rtol=1e-6, atol=1e-9):
                raise CheckFailed(f"{name}: dw leaves the bias out of the residual; the residual is "
                                  f"x @ w + b - y ({where})")
            if torch.allclose(dw, x.mean(0) * r.mean(), rtol=1e-6, atol=1e-9):
                raise CheckFailed(f"{name}: dw is mean(x) * mean(residual); the gradient is the mean "
                                  f"of the products x_i * residual_i, x.T @ residual / n ({where})")
            hint = _gradient_hint(_factor(dw, ref_dw), n, "dw")
            if hint is not None:
                raise CheckFailed(f"{name}: {hint} ({where})")
            raise CheckFailed(f"{name}: dw is wrong {where}: expected {ref_dw.tolist()}, "
                              f"got {dw.tolist()}. Each entry is the mean of x[:, j] * residual")
        hint = _gradient_hint(_factor(db.reshape(1), ref_db.reshape(1)), n, "db")
        if hint is not None:
            raise CheckFailed(f"{name}: dw is right, but {hint} ({where})")
        raise CheckFailed(f"{name}: dw is right, but db is wrong {where}: expected "
                          f"{ref_db.item():.6g}, got {db.item():.6g}; db is the mean residual")
    passed(name, "dw and db match on 3 random problems")


def _hessian(d: torch.Tensor) -> torch.Tensor:
    return d.T @ d / d.shape[0]


def largest_stable_lr(fn) -> None:
    """Check ``fn(x) -> float``: ``2 / lambda_max`` of the least-squares Hessian in ``(w, b)``."""
    name = "largest_stable_lr"
    for x in _cases(2):
        n = x.shape[0]
        design = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], dim=1)
        lam = torch.linalg.eigvalsh(_hessian(design))
        ref = 2 / lam[-1].item()
        value = call(fn, x.clone(), name=name)
        if value is None:
            raise CheckFailed(f"{name}: the function returned None; did you forget `return`?")
        try:
            got = float(torch.as_tensor(value).reshape(()))
        except (TypeError, ValueError, RuntimeError) as e:
            raise CheckFailed(f"{name}: return one number, got {value!r}") from e
        if math.isclose(got, ref, rel_tol=1e-6):
            continue
        xc = x - x.mean(0)
        cov = _hessian(xc)
        wrong = [
            (1 / lam[-1].item(), "that is 1/lambda_max, half the limit: gradient descent still "
                                 "converges up to 2/lambda_max (the factor 1 - lr*lambda only has "
                                 "to stay above -1). If you doubled the Hessian: with L = 1/(2n) "
                                 "sum r^2 it is D^T D / n, without a factor 2"),
            (2 / lam[0].item(), "you used the smallest eigenvalue; the fastest-curving direction "
                                "(lambda_max) is the one that blows up first"),
            (lam[-1].item(), "you returned lambda_max itself; the rate is 2 / lambda_max"),
            (2 / torch.linalg.eigvalsh(_hessian(x))[-1].item(),
             "you left out the bias: the Hessian in (w, b) needs a column of ones beside x"),
            (2 / torch.linalg.eigvalsh(design.T @ design)[-1].item(),
             "the Hessian of the *mean* loss has D^T D / n: you forgot to divide by n"),
            (2 / torch.linalg.eigvalsh(cov)[-1].item(),
             "you used the covariance of x (centered): the Hessian is the uncentered D^T D / n "
             "with D = [x, 1]; the two differ when the features have non-zero means"),
            (2 / torch.linalg.eigvalsh(cov * n / (n - 1))[-1].item(),
             "you used the (unbiased) covariance of x: the Hessian is the uncentered D^T D / n "
             "with D = [x, 1]"),
            (2 / torch.linalg.svdvals(design / math.sqrt(n))[0].item(),
             "you used a singular value of D / sqrt(n); the eigenvalues of D^T D / n are their "
             "squares"),
            (2 / torch.linalg.svdvals(design)[0].item(),
             "you used the largest singular value of D; lambda_max is the square of that of "
             "D / sqrt(n)"),
        ]
        for candidate, hint in wrong:
            if math.isclose(got, candidate, rel_tol=1e-6):
                raise CheckFailed(f"{name}: {hint} (x of shape {tuple(x.shape)}: expected "
                                  f"{ref:.6g}, got {got:.6g})")
        raise CheckFailed(f"{name}: expected {ref:.6g} for x of shape {tuple(x.shape)}, got "
                          f"{got:.6g}. The Hessian of L(w, b) is D^T D / n with D = [x, 1]; the "
                          f"largest stable rate is 2 over its largest eigenvalue")
    passed(name, "2 / lambda_max on 3 random data sets")
