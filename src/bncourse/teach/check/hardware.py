"""Exercise checks of Chapter 7, batch norm meets the hardware: predicting a kernel's time from the
bytes it moves, and folding a batch norm into the Linear layer before it."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...fold import fold_batch_norm
from ...lab.device import generator
from .core import CheckFailed, call, passed

__all__ = ["fold_linear_bn", "predict_ms"]


def _reference_ms(shape, passes, bytes_per_value, gbps):
    return passes * math.prod(shape) * bytes_per_value / (gbps * 1e9) * 1e3


def predict_ms(fn) -> None:
    """Check ``fn(shape, passes, bytes_per_value, gbps) -> milliseconds`` at the roof."""
    name = "predict_ms"
    cases = [((16384, 256), 5, 4, 10.0), ((32, 64, 56, 56), 2, 4, 25.0), ((8, 3), 3, 8, 1.0),
             ((128, 16, 7, 7, 7), 2, 2, 400.0)]
    for shape, passes, size, gbps in cases:
        ref = _reference_ms(shape, passes, size, gbps)
        got = call(fn, shape, passes, size, gbps, name=name)
        if not isinstance(got, int | float) or isinstance(got, bool):
            raise CheckFailed(f"{name}: expected a number of milliseconds, got {type(got).__name__}")
        if math.isclose(got, ref, rel_tol=1e-6):
            continue
        where = f"shape {shape}, {passes} passes, {size}-byte values, {gbps} GB/s"
        for factor, mistake in ((1e-3, "seconds instead of milliseconds"),
                                (8.0, "bits instead of bytes (a GB/s counts bytes)"),
                                (1 / passes, "one pass over the tensor instead of `passes`"),
                                (1 / size, "values instead of bytes (multiply by bytes_per_value)"),
                                (1.024**3, "GiB instead of GB (1 GB/s is 1e9 bytes a second)")):
            if math.isclose(got, ref * factor, rel_tol=1e-3):
                raise CheckFailed(f"{name}: got {got:.4g} ms for {where}, expected {ref:.4g}: {mistake}")
        raise CheckFailed(f"{name}: got {got:.4g} ms for {where}, expected {ref:.4g} "
                          "(bytes = passes * values * bytes_per_value; time = bytes / (GB/s * 1e9))")
    passed(name, f"{len(cases)} shapes")


def _trained_pair(seed: int, n_in: int, n_out: int, affine: bool):
    g = generator(seed)
    linear = nn.Linear(n_in, n_out).double()
    norm = nn.BatchNorm1d(n_out, eps=1e-3, affine=affine).double()
    with torch.no_grad():
        for p in (*linear.parameters(), *norm.parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        norm.running_mean.copy_(torch.randn(n_out, generator=g, dtype=torch.float64) * 2)
        norm.running_var.copy_(torch.rand(n_out, generator=g, dtype=torch.float64) * 3 + 0.01)
    return linear, norm.eval(), torch.randn(16, n_in, generator=g, dtype=torch.float64)


def _folded_with(linear, norm, *, eps=None, std=False, mean_sign=1.0, beta=True, scale_w=True):
    scale = 1 / (norm.running_var + (norm.eps if eps is None else eps)).sqrt()
    if std:
        scale = 1 / norm.running_var.sqrt()
    scale = scale * (norm.weight if norm.weight is not None else 1)
    shift = (linear.bias - mean_sign * norm.running_mean) * scale
    if beta and norm.bias is not None:
        shift = shift + norm.bias
    weight = linear.weight * scale[:, None] if scale_w else linear.weight
    return lambda x: x @ weight.T + shift


def fold_linear_bn(fn) -> None:
    """Check ``fn(linear, batch_norm) -> nn.Linear`` computing ``batch_norm(linear(x))`` in eval mode."""
    name = "fold_linear_bn"
    for seed, (n_in, n_out, affine) in enumerate([(5, 4, True), (3, 6, True), (4, 4, False)]):
        linear, norm, x = _trained_pair(seed, n_in, n_out, affine)
        before = [t.clone() for t in linear.state_dict().values()]
        with torch.no_grad():
            want = norm(linear(x))
            got_layer = call(fn, linear, norm, name=name)
        if not isinstance(got_layer, nn.Linear):
            raise CheckFailed(f"{name}: expected an nn.Linear, got {type(got_layer).__name__}")
        if any(not torch.equal(a, b) for a, b in zip(before, linear.state_dict().values(), strict=True)):
            raise CheckFailed(f"{name}: the original Linear was changed; fold into a copy "
                              "(copy.deepcopy) so the unfolded model still works")
        with torch.no_grad():
            got = got_layer(x)
        if got.shape == want.shape and torch.allclose(got, want, rtol=1e-9, atol=1e-9):
            continue
        with torch.no_grad():
            mistakes = [
                (_folded_with(linear, norm, eps=0.0), "eps is missing: divide by sqrt(var + eps)"),
                (_folded_with(linear, norm, std=True), "eps is missing: divide by sqrt(var + eps)"),
                (_folded_with(linear, norm, mean_sign=-1.0), "the mean is added; subtract it: b - mean"),
                (_folded_with(linear, norm, beta=False), "beta (the batch norm's bias) is missing"),
                (_folded_with(linear, norm, scale_w=False),
                 "the weight is not scaled: W' = scale * W, one scale per row (output channel)"),
            ]
            for wrong, why in mistakes:
                if got.shape == want.shape and torch.allclose(got, wrong(x), rtol=1e-9, atol=1e-9):
                    raise CheckFailed(f"{name}: {why}")
        error = (got - want).abs().max().item() if got.shape == want.shape else float("nan")
        raise CheckFailed(f"{name}: the folded layer differs from batch_norm(linear(x)) by up to {error:.3g} "
                          f"(Linear({n_in}, {n_out}), affine={affine}); W' = scale * W row by row, "
                          "b' = scale * (b - mean) + beta, scale = gamma / sqrt(var + eps)")
    torch.testing.assert_close(fold_batch_norm(linear, norm)(x), want)  # the package agrees
    passed(name, "3 Linear + BatchNorm1d pairs, to 1e-9 in float64")

