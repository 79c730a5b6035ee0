"""Exercise checks of Chapter 3, the BN flow: forward, scale and shift, backward, gradient checking.

Each check runs the learner's function on fresh float64 inputs built so that the usual mistakes
(unbiased variance, eps forgotten, wrong axis, a gradient that ignores mu and sigma) give clearly
different numbers, compares with :mod:`bncourse.functional`, and names the mistake it recognises.
"""

from collections.abc import Callable

import torch

from ... import functional as F
from ...lab.device import generator
from ...lab.testing import numeric_gradient as _reference_gradient
from ...lab.testing import rel_error
from .core import CheckFailed, affine_params, call, channel_data, passed

__all__ = ["bias_shift", "bn_backward", "bn_forward", "identity_params", "numeric_gradient"]

EPS = 1e-3  # large enough that forgetting it, or adding it in the wrong place, shows


def _reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    return (0, *range(2, x.dim()))


def _channel_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def _result(value, name: str, like: torch.Tensor, wrong_axis: str | None = None) -> torch.Tensor:
    """The learner's value as a float64 tensor shaped like ``like`` (a 0-d value is broadcast)."""
    if value is None:
        raise CheckFailed(f"{name}: the function returned None; did you forget `return`?")
    if isinstance(value, tuple | list):
        raise CheckFailed(f"{name}: expected one tensor of shape {tuple(like.shape)}, got a "
                          f"{type(value).__name__} of {len(value)} items")
    t = torch.as_tensor(value).detach().to(torch.float64).cpu()
    if t.dim() == 0:
        t = t.expand(like.shape)
    if t.shape != like.shape:
        hint = f" ({wrong_axis})" if wrong_axis else ""
        raise CheckFailed(f"{name}: expected shape {tuple(like.shape)}, got "
                          f"{tuple(t.shape)}{hint}")
    return t


def _compare(name: str, what: str, got: torch.Tensor, ref: torch.Tensor,
             mistakes: list[tuple[str, torch.Tensor]], hint: str) -> None:
    """Pass if ``got`` matches ``ref``; else name the first mistake it matches, or give a hint."""
    if _close(got, ref):
        return
    for message, wrong in mistakes:
        if _close(got, wrong):
            raise CheckFailed(f"{name}: {what} is wrong: {message}")
    if not torch.isfinite(got).all():
        raise CheckFailed(f"{name}: {what} contains NaN or inf")
    raise CheckFailed(f"{name}: {what} differs from the reference (largest relative error "
                      f"{rel_error(got, ref):.2g}); {hint}")


def _normalize(x, dims, eps, unbiased=False, how="sqrt(var + eps)"):
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, keepdim=True, correction=int(unbiased))
    denominator = {
        "sqrt(var + eps)": lambda: torch.sqrt(var + eps),
        "sqrt(var)": lambda: torch.sqrt(var),
        "sqrt(var) + eps": lambda: torch.sqrt(var) + eps,
        "var + eps": lambda: var + eps,
    }[how]()
    return (x - mean) / denominator


FORWARD_HINT = ("compute mu and the biased variance per channel over every dim but 1, "
                "x_hat = (x - mu) / sqrt(var + eps), then gamma * x_hat + beta")


def bn_forward(fn: Callable) -> None:
    """Check ``fn(x, gamma, beta, eps) -> out``, batch norm's training forward for (N, C, *)."""
    name = "bn_forward"
    for seed, (shape, eps) in enumerate([((4, 6), EPS), ((16, 5), 1e-5), ((3, 4, 2, 3), EPS)]):
        x = channel_data(shape, seed, offset=5)
        gamma, beta = affine_params(shape[1], seed)
        dims = _reduce_dims(x)
        g, b = (_channel_view(v, x) for v in (gamma, beta))
        ref = F.batch_norm_forward(x, gamma, beta, eps)[0]
        out = call(fn, x.clone(), gamma.clone(), beta.clone(), eps, name=name)
        got = _result(out, name, ref)
        norm = lambda **kw: g * _normalize(x, dims, eps, **kw) + b  # noqa: B023, E731
        mistakes = [
            ("it uses the unbiased variance (divided by m - 1); batch norm normalizes with the "
             "biased one, the mean of (x - mu)^2 (torch: correction=0)", norm(unbiased=True)),
            (f"eps is missing (this batch has a channel whose variance is below eps={eps:g}): "
             "divide by sqrt(var + eps)", norm(how="sqrt(var)")),
            ("eps is added outside the square root: divide by sqrt(var + eps), not "
             "sqrt(var) + eps", norm(how="sqrt(var) + eps")),
            ("it divides by the variance: divide by the standard deviation sqrt(var + eps)",
             norm(how="var + eps")),
            ("gamma and beta are not applied: return gamma * x_hat + beta",
             _normalize(x, dims, eps)),
            ("gamma and beta are swapped: gamma scales, beta shifts",
             _channel_view(beta, x) * _normalize(x, dims, eps) + _channel_view(gamma, x)),
            ("statistics over all the elements at once: batch norm takes one mean and variance "
             "per channel (dim 1)", g * _normalize(x, tuple(range(x.dim())), eps) + b),
        ]
        if x.dim() == 2:
            mistakes.append(("statistics over the wrong axis, per sample over dim 1 (that is "
                             "layer normalization): batch norm takes them per feature over the "
                             "batch, dim 0", g * _normalize(x, (1,), eps) + b))
        else:
            mistakes += [
                ("statistics over dim 0 only, one mean per position: for an (N, C, H, W) input "
                 "batch norm takes one mean and variance per channel over (N, H, W)",
                 g * _normalize(x, (0,), eps) + b),
                ("statistics over (H, W) for each sample (that is instance normalization): batch "
                 "norm takes one mean and variance per channel over (N, H, W)",
                 g * _normalize(x, (2, 3), eps) + b),
            ]
        what = f"the output for an input of shape {shape}"
        _compare(name, what, got, ref, mistakes, FORWARD_HINT)
    passed(name, "2D and 4D inputs, eps respected")


def identity_params(fn: Callable) -> None:
    """Check ``fn(x, eps) -> (gamma, beta)`` making batch norm the identity on the batch ``x``."""
    name = "identity_params"
    for seed, shape in enumerate([(4, 6), (10, 3)]):
        x = channel_data(shape, seed, offset=5)
        mean, var = x.mean(0), x.var(0, correction=0)
        out = call(fn, x.clone(), EPS, name=name)
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise CheckFailed(f"{name}: expected a pair (gamma, beta), got {type(out).__name__}")
        axis = "one value per feature: take the statistics over the batch, dim 0"
        gamma = _result(out[0], name, mean, axis)
        beta = _result(out[1], name, mean, axis)
        if _close(gamma, mean) and _close(beta, torch.sqrt(var + EPS)):
            raise CheckFailed(f"{name}: gamma and beta are swapped: gamma must undo the division "
                              "by sqrt(var + eps), beta the subtraction of mu")
        _compare(name, "gamma", gamma, torch.sqrt(var + EPS), [
            ("it uses the unbiased variance (divided by m - 1); batch norm divides by the biased "
             "standard deviation, so gamma = sqrt(biased var + eps)",
             torch.sqrt(x.var(0, correction=1) + EPS)),
            (f"eps is missing: batch norm divides by sqrt(var + eps) (eps={EPS:g} here, larger "
             "than one feature's variance), so gamma = sqrt(var + eps)", torch.sqrt(var)),
            ("eps is added outside the square root: gamma = sqrt(var + eps)",
             torch.sqrt(var) + EPS),
            ("the square root is missing: gamma = sqrt(var + eps), a standard deviation",
             var + EPS),
            ("gamma = 1 leaves x_hat scaled to unit variance: undo the division, "
             "gamma = sqrt(var + eps)", torch.ones_like(var)),
        ], "gamma must undo the division by sqrt(var + eps)")
        _compare(name, "beta", beta, mean, [
            ("beta = 0 leaves the output centred: beta must undo the subtraction, beta = mu",
             torch.zeros_like(mean)),
        ], "beta must undo the subtraction of mu")
        out = F.batch_norm_forward(x, gamma, beta, EPS)[0]
        if not _close(out, x):  # the two checks above pass only for the right answer
            raise CheckFailed(f"{name}: batch norm with your gamma and beta is not the identity")
    passed(name, "batch norm with them returns its input")


def bias_shift(fn: Callable) -> None:
    """Check ``fn(b, gamma, running_var, eps, training) -> shift`` of BN's output, per channel."""
    name = "bias_shift"
    for seed in range(3):
        g = generator(seed)
        b = torch.randn(5, generator=g, dtype=torch.float64)
        gamma = torch.rand(5, generator=g, dtype=torch.float64) * 1.5 + 0.5
        running_var = torch.logspace(-4, 1, 5, dtype=torch.float64)[torch.randperm(5, generator=g)]
        eps = EPS
        args = (b.clone(), gamma.clone(), running_var.clone(), eps)
        got = _result(call(fn, *args, True, name=name), name, b)
        if not _close(got, torch.zeros_like(b)):
            raise CheckFailed(
                f"{name}: the training-mode shift is wrong: in training mode the batch mean moves "
                "with the bias (the mean of x + b is mu + b), so x - mu, and the output, do not "
                "change: the shift is 0")
        got = _result(call(fn, *args, False, name=name), name, b)
        ref = gamma * b / torch.sqrt(running_var + eps)
        _compare(name, "the eval-mode shift", got, ref, [
            ("in eval mode mu is the running mean, a constant: it does not absorb the bias",
             torch.zeros_like(b)),
            ("the bias does not pass through unchanged: it is divided by sqrt(running_var + eps) "
             "and multiplied by gamma", b),
            ("eps is missing: the normalization divides by sqrt(running_var + eps)",
             gamma * b / torch.sqrt(running_var)),
            ("gamma is missing: the normalized value is multiplied by gamma",
             b / torch.sqrt(running_var + eps)),
            ("the square root is missing: divide by the standard deviation sqrt(running_var + eps)",
             gamma * b / (running_var + eps)),
            ("the sign is wrong: adding b to the input raises the output", -ref),
        ], "in eval mode, out = gamma * (x - running_mean) / sqrt(running_var + eps) + beta")
    passed(name, "0 in training, gamma * b / sqrt(running_var + eps) in eval")


def _closed_form_dx(dout, x, gamma, eps, dims=(0,), unbiased=False, paths=("mu", "var")):
    """dx of batch norm, optionally with a wrong variance, wrong sums, or paths left out."""
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, keepdim=True, correction=int(unbiased))
    inv_std = 1 / torch.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    dx_hat = dout * gamma
    dx = dx_hat
    if "mu" in paths:
        dx = dx - dx_hat.mean(dims, keepdim=True)
    if "var" in paths:
        dx = dx - x_hat * (dx_hat * x_hat).mean(dims, keepdim=True)
    return inv_std * dx


def bn_backward(fn: Callable) -> None:
    """Check ``fn(dout, x, gamma, eps) -> (dx, dgamma, dbeta)`` for an (N, D) input."""
    name = "bn_backward"
    for seed, shape in enumerate([(5, 4), (16, 3), (6, 7)]):
        x = channel_data(shape, seed, offset=5)
        gamma, beta = affine_params(shape[1], seed)
        dout = torch.randn(shape, generator=generator(seed + 7),
                           dtype=torch.float64)
        _, cache = F.batch_norm_forward(x, gamma, beta, EPS)
        ref = F.batch_norm_backward_fused(dout, cache)
        out = call(fn, dout.clone(), x.clone(), gamma.clone(), EPS, name=name)
        if not isinstance(out, tuple | list) or len(out) != 3:
            raise CheckFailed(f"{name}: expected a triple (dx, dgamma, dbeta), got "
                              f"{type(out).__name__}")
        axis = "one value per feature: sum over the batch, dim 0"
        dx = _result(out[0], name, x)
        dgamma, dbeta = (_result(v, name, gamma, axis) for v in out[1:])
        dx_of = lambda **kw: _closed_form_dx(dout, x, gamma, EPS, **kw)  # noqa: B023, E731
        _compare(name, "dx", dx, ref[0], [
            ("it treats mu and sigma^2 as constants (dx = gamma * dout / sqrt(var + eps)), but x "
             "also reaches the output through mu and sigma^2: add those two paths",
             dx_of(paths=())),
            ("it has the path through mu but not the one through sigma^2: the term "
             "-x_hat * mean(dx_hat * x_hat) is missing", dx_of(paths=("mu",))),
            ("it has the path through sigma^2 but not the one through mu: the term "
             "-mean(dx_hat) is missing", dx_of(paths=("var",))),
            ("it uses the unbiased variance (divided by m - 1); batch norm normalizes with the "
             "biased one", dx_of(unbiased=True)),
            ("eps is missing: the forward divides by sqrt(var + eps)",
             _closed_form_dx(dout, x, gamma, 0.0)),
            ("the factor gamma is missing: dL/dx_hat = gamma * dout",
             _closed_form_dx(dout, x, torch.ones_like(gamma), EPS)),
            ("the means run over the wrong axis: they are per feature, over the batch (dim 0)",
             _closed_form_dx(dout, x, gamma, EPS, dims=(1,))),
        ], "dx = gamma / sqrt(var + eps) * (dout - mean(dout) - x_hat * mean(dout * x_hat))")
        x_hat = cache.x_hat
        if _close(dgamma, ref[2]) and _close(dbeta, ref[1]):
            raise CheckFailed(f"{name}: dgamma and dbeta are swapped: dgamma = sum(dout * x_hat), "
                              "dbeta = sum(dout)")
        _compare(name, "dgamma", dgamma, ref[1], [
            ("it sums dout alone: gamma multiplies x_hat, so dgamma = sum(dout * x_hat)",
             dout.sum(0)),
            ("it uses x instead of the normalized x_hat", (dout * x).sum(0)),
            ("it is a mean over the batch: the loss sums over it, so dgamma is a sum",
             (dout * x_hat).mean(0)),
        ], "dgamma = sum over the batch of dout * x_hat")
        _compare(name, "dbeta", dbeta, ref[2], [
            ("it is a mean over the batch: the loss sums over it, so dbeta is a sum",
             dout.mean(0)),
        ], "dbeta = sum over the batch of dout")
    passed(name, "dx through mu and sigma^2, dgamma and dbeta")


def _differences(f: Callable, x: torch.Tensor, dout: torch.Tensor, h: float, how: str) -> torch.Tensor:
    """Finite differences of ``sum(f() * dout)`` in ``x`` (``f`` reads ``x``), done a usual wrong way."""
    loss = lambda: (f() * dout).sum().item()  # noqa: E731
    base, grad, flat = loss(), torch.zeros_like(x), x.view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + h
        plus = loss()
        flat[i] = old - h
        minus = loss()
        flat[i] = old
        grad.view(-1)[i] = {"forward": (plus - base) / h, "backward": (base - minus) / h,
                            "over h": (plus - minus) / h, "half": (plus - base) / (2 * h)}[how]
    return grad


def _gradient_case(fn: Callable, name: str, shape: tuple[int, ...], h: float, seed: int) -> None:
    """One input of the ``numeric_gradient`` check: ``f`` is batch norm then tanh, reading ``x``."""
    g = generator(seed)
    spread = torch.rand(shape[1], generator=g, dtype=torch.float64) * 1.5 + 0.5
    x = torch.randn(shape, generator=g, dtype=torch.float64) * spread.reshape(-1, *[1] * (len(shape) - 2)) + 3
    gamma, beta = affine_params(shape[1], seed)
    dout = torch.randn(shape, generator=g, dtype=torch.float64)

    def on_copy(differences, *args):  # differences(f, t, *args), f reading t, a fresh copy of x
        t = x.clone()
        return differences(lambda: torch.tanh(F.batch_norm_forward(t, gamma, beta, EPS)[0]), t, *args)

    mine = x.clone()
    out = call(fn, lambda: torch.tanh(F.batch_norm_forward(mine, gamma, beta, EPS)[0]), mine,
               dout.clone(), h, name=name)
    if not torch.allclose(mine, x, rtol=1e-12, atol=1e-12):
        raise CheckFailed(
            f"{name}: x is left changed after the call: put each entry back after nudging it, "
            "or every later entry is differenced at a shifted point")
    got = _result(out, name, x, "the gradient has the shape of x")
    one_sided = ("whose error is O(h): use the central difference (f(x + h) - f(x - h)) / (2h), "
                 "whose error is O(h^2)")
    mistakes = [
        ("it ignores the argument h: nudge by the h it is given",
         on_copy(_reference_gradient, dout)),
        (f"it is a one-sided difference, (f(x + h) - f(x)) / h, {one_sided}",
         on_copy(_differences, dout, h, "forward")),
        (f"it is a one-sided difference, (f(x) - f(x - h)) / h, {one_sided}",
         on_copy(_differences, dout, h, "backward")),
        ("it divides by h: x + h and x - h are 2h apart, so divide by 2h",
         on_copy(_differences, dout, h, "over h")),
        ("the gradient is zero: nudge one entry of x at a time, in place (x.view(-1)[i] = old + h): "
         "f() reads x itself, so it never sees a copy or x + h, and batch norm's output does not "
         "change when all of x moves at once", torch.zeros_like(x)),
        ("it computes (f(x + h) - f(x)) / (2h): the second point must be x - h (if you kept the old "
         "value as x.view(-1)[i], that is a view that changes with x: keep a number, .item())",
         on_copy(_differences, dout, h, "half")),
        ("it differentiates sum(f()): the scalar is sum(f() * dout), the output weighted by dout",
         on_copy(_reference_gradient, torch.ones_like(dout), h)),
    ]
    _compare(name, f"the gradient for an input of shape {shape} with h={h:g}", got,
             on_copy(_reference_gradient, dout, h), mistakes,
             "for each entry: set it to old + h, evaluate sum(f() * dout), set it to old - h, "
             "evaluate again, restore old; its gradient is (plus - minus) / (2h)")


def numeric_gradient(fn: Callable) -> None:
    """Check ``fn(f, x, dout, h) -> grad``: central differences of ``sum(f() * dout)``, ``f`` reading ``x``.

    ``f`` is a batch-norm layer followed by tanh, so that ``sum(f())`` depends on ``x``; a large ``h``
    sets the one-sided and mis-scaled differences apart from the central one.
    """
    name = "numeric_gradient"
    for seed, (shape, h) in enumerate([((6, 3), 0.1), ((3, 2, 2, 2), 0.1), ((5, 4), 1e-5)]):
        _gradient_case(fn, name, shape, h, seed)
    passed(name, "central differences, one entry at a time, x restored")
