"""Batch normalization kernels, written once in PyTorch ops so they run on any device.

Conventions are PyTorch's: statistics are taken per channel (dim 1) over every other dim, the
input is normalized with the *biased* batch variance, and ``running_var`` stores the *unbiased* one.

Two choices in these kernels come from measurement (``python -m bncourse.bench``), not taste:

* The variance is computed in two passes, ``mean((x - mean)**2)``. The one-pass form
  ``E[x**2] - E[x]**2`` loses every digit in float32 when the data has a large offset.
* Reductions use ``Tensor.sum`` / ``Tensor.mean`` over the non-channel dims. On the CPU these are
  vectorised across the channel dim and run at memory speed; ``torch.var_mean`` over dim 0 is about
  50x slower there, and a matrix-vector product with a ones vector about 5x slower.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "BatchNormCache",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_backward_fused",
    "batch_norm_forward",
]


@dataclass
class BatchNormCache:
    """What the forward pass keeps for the backward pass.

    ``x_hat`` is the normalized input, ``mean``/``var`` the biased batch statistics and ``inv_std``
    ``1/sqrt(var + eps)``, each of shape ``(C,)``. ``x`` is kept for the staged backward, which
    retraces the forward graph step by step.
    """

    x_hat: torch.Tensor
    mean: torch.Tensor | None
    var: torch.Tensor | None
    inv_std: torch.Tensor
    gamma: torch.Tensor | None
    eps: float
    x: torch.Tensor | None = None

    @property
    def dims(self) -> tuple[int, ...]:
        return reduce_dims(self.x_hat)

    @property
    def count(self) -> int:
        """Number of values per channel, m in the paper."""
        return self.x_hat.numel() // self.x_hat.shape[1]


def reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    """The dims statistics are taken over: every dim but the channel dim 1."""
    return (0, *range(2, x.dim()))


def channel_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-channel vector ``(C,)`` so it broadcasts against ``x`` of shape ``(N, C, *)``."""
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def check_input(x: torch.Tensor, training: bool) -> None:
    """Raise a clear error for inputs batch normalization cannot handle."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor input, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point input (float16/32/64), got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(
            f"expected an input of shape (N, C) or (N, C, *), got {x.dim()}D input of shape "
            f"{tuple(x.shape)}"
        )
    if training and x.numel() // x.shape[1] <= 1:
        raise ValueError(
            "expected more than 1 value per channel when training, got input of shape "
            f"{tuple(x.shape)} (1 value per channel: x - mean is 0 whatever x is)"
        )


def check_channel_vector(v: torch.Tensor | None, name: str, x: torch.Tensor) -> None:
    if v is None:
        return
    channels = x.shape[1]
    if v.dim() != 1 or v.shape[0] != channels:
        raise ValueError(
            f"expected {name} of shape ({channels},), one value per channel of the input of shape "
            f"{tuple(x.shape)}, got shape {tuple(v.shape)}"
        )


def batch_norm_forward(
    x: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None, eps: float = 1e-5
) -> tuple[torch.Tensor, BatchNormCache]:
    """Training-mode forward: normalize with the batch statistics, then scale and shift.

    ``x`` has shape ``(N, C)`` or ``(N, C, *)``; ``gamma`` and ``beta`` have shape ``(C,)`` (``None``
    means 1 and 0). Returns ``(out, cache)``.
    """
    check_input(x, training=True)
    check_channel_vector(gamma, "gamma", x)
    check_channel_vector(beta, "beta", x)
    dims = reduce_dims(x)
    mean = x.mean(dims)
    x_hat = x - channel_view(mean, x)  # x - mu, normalized in place below
    var = x_hat.square().mean(dims)  # two passes: accurate when |mean| >> std
    inv_std = torch.rsqrt(var + eps)
    x_hat.mul_(channel_view(inv_std, x))
    out = affine(x_hat, gamma, beta)
    return out, BatchNormCache(x_hat, mean, var, inv_std, gamma, eps, x)


def affine(x_hat: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None):
    """``gamma * x_hat + beta`` per channel, in one kernel when both are given."""
    if gamma is not None and beta is not None:
        return torch.addcmul(channel_view(beta, x_hat), x_hat, channel_view(gamma, x_hat))
    if gamma is not None:
        return x_hat * channel_view(gamma, x_hat)
    if beta is not None:
        return x_hat + channel_view(beta, x_hat)
    return x_hat.clone()


def batch_norm_backward(dout: torch.Tensor, cache: BatchNormCache):
    """Backward pass, staged: back through each node of the forward graph in turn.

    The graph is ``mu = mean(x)``, ``xmu = x - mu``, ``var = mean(xmu**2)``,
    ``inv_std = 1/sqrt(var + eps)``, ``x_hat = xmu * inv_std``, ``out = gamma * x_hat + beta``.
    Returns ``(dx, dgamma, dbeta)``. Slower than :func:`batch_norm_backward_fused`; written to be read.
    """
    x, dims, m = cache.x, cache.dims, cache.count
    view = lambda v: channel_view(v, x)  # noqa: E731
    gamma = cache.gamma if cache.gamma is not None else torch.ones_like(cache.mean)
    # out = gamma * x_hat + beta
    dbeta = dout.sum(dims)
    dgamma = (dout * cache.x_hat).sum(dims)
    dx_hat = dout * view(gamma)
    # x_hat = xmu * inv_std: xmu feeds x_hat directly and through var
    xmu = x - view(cache.mean)
    dinv_std = (dx_hat * xmu).sum(dims)
    dxmu = dx_hat * view(cache.inv_std)
    # inv_std = (var + eps) ** -1/2
    dvar = -0.5 * cache.inv_std**3 * dinv_std
    # var = mean(xmu ** 2)
    dxmu = dxmu + 2.0 * xmu * view(dvar) / m
    # xmu = x - mu, mu = mean(x)
    dmu = -dxmu.sum(dims)
    dx = dxmu + view(dmu) / m
    return dx, dgamma, dbeta


def batch_norm_backward_fused(dout: torch.Tensor, cache: BatchNormCache):
    """Backward pass in closed form (the staged graph, simplified by hand).

    ``dx = gamma * inv_std / m * (m * dout - sum(dout) - x_hat * sum(dout * x_hat))``,
    with sums per channel. Returns ``(dx, dgamma, dbeta)``.
    """
    x_hat, dims, m = cache.x_hat, cache.dims, cache.count
    dbeta = dout.sum(dims)
    dgamma = (dout * x_hat).sum(dims)
    scale = cache.inv_std if cache.gamma is None else cache.gamma * cache.inv_std
    # dx = scale * (dout - dbeta/m - x_hat * dgamma/m), two kernels and one temporary
    dx = torch.addcmul(channel_view(-dbeta / m, x_hat), x_hat, channel_view(-dgamma / m, x_hat))
    dx.add_(dout).mul_(channel_view(scale, x_hat))
    return dx, dgamma, dbeta


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Batch normalization with the signature and semantics of ``torch.nn.functional.batch_norm``.

    Training mode normalizes with the batch statistics and, when running buffers are given,
    updates them in place: ``new = (1 - momentum) * old + momentum * batch`` (the variance
    unbiased). Eval mode normalizes with the running statistics. Differentiable through this
    package's own backward (:class:`bncourse.autograd.BatchNormFunction`).
    """
    from .autograd import BatchNormFunction

    check_input(input, training)
    for name, v in (("running_mean", running_mean), ("running_var", running_var)):
        check_channel_vector(v, name, input)
    check_channel_vector(weight, "weight", input)
    check_channel_vector(bias, "bias", input)
    if training:
        out, mean, var = BatchNormFunction.apply(input, weight, bias, eps)
        update_running_stats(running_mean, running_var, mean, var, momentum, input)
        return out
    if running_mean is None or running_var is None:
        raise ValueError(
            "expected running_mean and running_var in eval mode (training=False), got None; "
            "pass training=True to normalize with the batch statistics"
        )
    inv_std = torch.rsqrt(running_var + eps)
    scale = inv_std if weight is None else weight * inv_std
    shift = -running_mean * scale if bias is None else bias - running_mean * scale
    return torch.addcmul(channel_view(shift, input), input, channel_view(scale, input))


@torch.no_grad()
def update_running_stats(running_mean, running_var, mean, var, momentum, x) -> None:
    """PyTorch's exponential moving average, in place; ``running_var`` gets the unbiased variance."""
    m = x.numel() // x.shape[1]
    if running_mean is not None:
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
    if running_var is not None:
        unbiased = var.to(running_var.dtype) * (m / (m - 1))
        running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
