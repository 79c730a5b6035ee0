"""Comparison helpers shared by the tests, the notebooks and the exercise checks."""

from collections.abc import Callable

import torch


def rel_error(a, b, floor: float = 1e-8) -> float:
    """Largest elementwise relative error ``|a - b| / max(|a|, |b|, floor)``, as a float."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"expected tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.numel() == 0:
        return 0.0
    denom = torch.maximum(a.abs(), b.abs()).clamp_min(floor)
    return ((a - b).abs() / denom).max().item()


def numeric_gradient(f: Callable[[], torch.Tensor], x: torch.Tensor, dout: torch.Tensor,
                     h: float = 1e-5) -> torch.Tensor:
    """Central finite differences of ``sum(f() * dout)`` with respect to ``x``, changed in place.

    ``f`` takes no arguments and reads ``x``; use float64 so that ``h`` can be small.
    """
    grad = torch.zeros_like(x)
    flat, gflat = x.view(-1), grad.view(-1)
    with torch.no_grad():
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + h
            plus = (f() * dout).sum().item()
            flat[i] = old - h
            minus = (f() * dout).sum().item()
            flat[i] = old
            gflat[i] = (plus - minus) / (2 * h)
    return grad


def assert_close(actual, expected, *, rtol: float, atol: float, what: str = "values") -> None:
    """``torch.testing.assert_close`` with a message naming what was compared."""
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol,
        msg=lambda m: f"{what} differ from the reference:\n{m}",
    )
