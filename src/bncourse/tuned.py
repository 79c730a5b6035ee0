"""The same batch norm kernels as :mod:`bncourse.functional`, tuned for fewer passes over memory.

Batch norm does a few flops per value it reads, so its speed is set by memory traffic. These
kernels compute exactly the values of the readable ones; :func:`bncourse.functional.batch_norm`
and the layers of :mod:`bncourse.nn` run them. Three choices come from measurement
(``python -m bncourse.lab.bench``), not taste:

* The variance is computed in two passes, corrected for the rounding of the mean (Chan, Golub and
  LeVeque, 1983), with both sums of the second pass taken in one sweep (:func:`channel_sums`).
* Reductions are plain ``Tensor.sum`` calls (:func:`channel_sum`). On the CPU these are vectorised
  across the channel dim; over dim 0 of an ``(N, C)`` tensor the alternatives were slower where
  this was written (``torch.var_mean``, ``torch.linalg.vector_norm``, a product with a ones
  vector). Chapter 7 times them on the machine that runs it.
* The forward and the backward allocate one input-sized tensor each, as PyTorch's do (the output,
  ``dx``), and compute it in place: a fresh large tensor costs page faults comparable to the
  arithmetic. So the forward keeps only ``x`` and per-channel statistics, and products that are
  only summed are formed a slice at a time.
"""

import torch

from .kernels import BatchNormCache, channel_view, check_channel_vector, check_input

__all__ = ["batch_norm_backward_fused", "batch_norm_forward", "channel_sum", "channel_sums"]


def channel_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum per channel over every dim but 1, shape ``(C,)``.

    For an ``(N, C, H, W)`` input the trailing dims are summed first, then the batch dim: on the
    CPU that was faster than one reduction over ``(0, 2, 3)`` where this was written.
    """
    if t.dim() > 2:
        t = t.sum(tuple(range(2, t.dim())))
    return t.sum(0)


CHUNK_ELEMENTS = 1 << 20  # slice size of channel_sums: 4 MiB of float32


def channel_sums(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(sum(a), sum(a * b))`` over every dim but 1, each of shape ``(C,)``.

    Both sums are taken a slice of the batch at a time (about 4 MiB each), in one pass over memory,
    and the product is never formed at full size: a full-size temporary means a fresh allocation
    whose page faults cost as much as the arithmetic.
    """
    rows = max(1, CHUNK_ELEMENTS // max(1, a[0].numel()))
    total_a = total_ab = 0
    for a_rows, b_rows in zip(a.split(rows), b.split(rows), strict=True):
        total_a = total_a + channel_sum(a_rows)
        total_ab = total_ab + channel_sum(a_rows * b_rows)
    return total_a, total_ab


@torch.no_grad()
def batch_norm_forward(
    x: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None, eps: float = 1e-5
) -> tuple[torch.Tensor, BatchNormCache]:
    """:func:`bncourse.functional.batch_norm_forward`, with one input-sized allocation."""
    check_input(x, training=True)
    check_channel_vector(gamma, "gamma", x)
    check_channel_vector(beta, "beta", x)
    m = x.numel() // x.shape[1]
    mean = channel_sum(x) / m
    out = x - channel_view(mean, x)  # x - mean, turned into the output in place below
    # Chan, Golub and LeVeque's correction for the rounding of the mean: sum(out) is 0 up to it.
    centred_sum, squares = channel_sums(out, out)
    var = (squares - centred_sum * centred_sum / m) / m
    inv_std = torch.rsqrt(var + eps)
    # out = gamma * (x - mean) * inv_std + beta, as one kernel
    scale = inv_std if gamma is None else gamma * inv_std
    if beta is None:
        out.mul_(channel_view(scale, x))
    else:
        torch.addcmul(channel_view(beta, x), out, channel_view(scale, x), out=out)
    return out, BatchNormCache(x, mean, var, inv_std, gamma, eps)


@torch.no_grad()
def batch_norm_backward_fused(dout: torch.Tensor, cache: BatchNormCache):
    """:func:`bncourse.functional.batch_norm_backward_fused`, with one input-sized allocation."""
    inv_std, m = cache.inv_std, cache.count
    view = lambda v: channel_view(v, dout)  # noqa: E731
    dx = cache.x_mu  # x - mean, turned into dx in place below
    dbeta, dot = channel_sums(dout, dx)
    dgamma = dot * inv_std  # sum(dout * x_hat)
    scale = inv_std if cache.gamma is None else cache.gamma * inv_std
    # dx = scale * dout - scale * dbeta / m - (x - mean) * (scale * inv_std * dgamma / m): two kernels
    torch.addcmul(view(-scale * dbeta / m), dx, view(-scale * inv_std * dgamma / m), out=dx)
    dx.addcmul_(dout, view(scale))
    return dx, dgamma, dbeta
