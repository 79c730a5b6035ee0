"""The readable batch normalization kernels, written once in PyTorch ops so they run on any device.

Conventions are PyTorch's: statistics are taken per channel (dim 1) over every other dim, the
input is normalized with the *biased* batch variance, and ``running_var`` stores the *unbiased* one.

These are the kernels a reader learns from: each line is one step of the paper's Algorithm 1. The
variance is taken in two passes, ``mean((x - mean)**2)``: the one-pass form ``E[x**2] - E[x]**2``
loses every digit in float32 when the data has a large offset. :mod:`bncourse.tuned` computes the
same values with fewer passes over memory; :func:`bncourse.functional.batch_norm` and the layers of
:mod:`bncourse.nn` run those, or, with ``compiled=True``, these kernels compiled by
``torch.compile`` (:mod:`bncourse.compiled`). :mod:`bncourse.functional` re-exports every name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "BatchNormCache",
    "batch_norm_backward",
    "batch_norm_backward_fused",
    "batch_norm_eval",
    "batch_norm_forward",
]


@dataclass
class BatchNormCache:
    """What the forward pass keeps for the backward pass.

    ``x`` is the input; ``mean``/``var`` are the biased batch statistics and
    ``inv_std = 1/sqrt(var + eps)``, each of shape ``(C,)``. The centred and normalized inputs are
    recomputed when needed rather than kept: that is what lets training use no more memory than
    PyTorch's own batch norm.
    """

    x: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor | None
    inv_std: torch.Tensor
    gamma: torch.Tensor | None
    eps: float

    @property
    def x_mu(self) -> torch.Tensor:
        """The centred input ``x - mean`` (a new tensor on each access)."""
        return self.x - channel_view(self.mean, self.x)

    @property
    def x_hat(self) -> torch.Tensor:
        """The normalized input ``(x - mean) / sqrt(var + eps)`` (a new tensor on each access)."""
        return self.x_mu.mul_(channel_view(self.inv_std, self.x))

    @property
    def dims(self) -> tuple[int, ...]:
        return reduce_dims(self.x)

    @property
    def count(self) -> int:
        """Number of values per channel, m in the paper."""
        return self.x.numel() // self.x.shape[1]


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
    count = x.numel() // x.shape[1] if x.shape[1] else 0
    if training and count <= 1:
        why = " (x - mean is 0 whatever x is)" if count == 1 else ""
        raise ValueError(
            f"expected more than 1 value per channel when training, got {count} in the input of "
            f"shape {tuple(x.shape)}{why}"
        )


def check_eps(eps: float, training: bool) -> None:
    """As PyTorch: ``eps > 0`` in training (a constant channel has variance 0), ``eps >= 0`` in eval."""
    if training and eps <= 0:
        raise ValueError(f"eps must be positive when training (1/sqrt(var + eps) must be finite), got {eps}")
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps}")


def check_channel_vector(v: torch.Tensor | None, name: str, x: torch.Tensor) -> None:
    if v is None:
        return
    channels = x.shape[1]
    if v.dim() != 1 or v.shape[0] != channels:
        raise ValueError(
            f"expected {name} of shape ({channels},), one value per channel of the input of shape "
            f"{tuple(x.shape)}, got shape {tuple(v.shape)}"
        )


@torch.no_grad()
def batch_norm_forward(
    x: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, BatchNormCache]:
    """Training-mode forward: normalize with the batch statistics, then scale and shift.

    ``x`` has shape ``(N, C)`` or ``(N, C, *)``; ``gamma`` and ``beta`` have shape
    ``(C,)`` (``None`` means 1 and 0). Returns ``(out, cache)``. Like the backward
    kernels it computes values only (no autograd graph): :func:`batch_norm` is the
    differentiable version.
    """
    check_input(x, training=True)
    check_channel_vector(gamma, "gamma", x)
    check_channel_vector(beta, "beta", x)
    dims = reduce_dims(x)                      # every dim but the channel dim 1
    mean = x.mean(dims)                        # 1. batch mean, per channel
    x_mu = x - channel_view(mean, x)
    var = (x_mu * x_mu).mean(dims)             # 2. biased batch variance
    inv_std = torch.rsqrt(var + eps)
    x_hat = x_mu * channel_view(inv_std, x)    # 3. normalize
    out = affine(x_hat, gamma, beta)           # 4. scale and shift
    return out, BatchNormCache(x, mean, var, inv_std, gamma, eps)


def affine(x_hat: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None):
    """``gamma * x_hat + beta`` per channel (``None`` means 1 and 0), one kernel when both are given."""
    if gamma is not None and beta is not None:
        return torch.addcmul(channel_view(beta, x_hat), x_hat, channel_view(gamma, x_hat))
    if gamma is not None:
        return x_hat * channel_view(gamma, x_hat)
    if beta is not None:
        return x_hat + channel_view(beta, x_hat)
    return x_hat.clone()


@torch.no_grad()
def batch_norm_backward(dout: torch.Tensor, cache: BatchNormCache):
    """Backward pass, staged: back through each node of the forward graph in turn.

    The graph is ``mu = mean(x)``, ``x_mu = x - mu``, ``var = mean(x_mu**2)``,
    ``inv_std = 1/sqrt(var + eps)``, ``x_hat = x_mu * inv_std``,
    ``out = gamma * x_hat + beta``. Returns ``(dx, dgamma, dbeta)``. Slower than
    :func:`batch_norm_backward_fused`; written to be read.
    """
    x_mu, m, dims = cache.x_mu, cache.count, cache.dims
    view = lambda v: channel_view(v, x_mu)  # noqa: E731
    gamma = cache.gamma if cache.gamma is not None else torch.ones_like(cache.inv_std)
    x_hat = cache.x_hat
    # out = gamma * x_hat + beta
    dbeta = dout.sum(dims)
    dgamma = (dout * x_hat).sum(dims)
    dx_hat = dout * view(gamma)
    # x_hat = x_mu * inv_std: x_mu reaches x_hat directly, and through var and inv_std
    dinv_std = (dx_hat * x_mu).sum(dims)
    dx_mu = dx_hat * view(cache.inv_std)
    # inv_std = (var + eps) ** -1/2
    dvar = -0.5 * cache.inv_std**3 * dinv_std
    # var = mean(x_mu ** 2)
    dx_mu = dx_mu + 2.0 * x_mu * view(dvar) / m
    # x_mu = x - mu, mu = mean(x): x reaches x_mu directly, and through mu
    dmu = -dx_mu.sum(dims)
    dx = dx_mu + view(dmu) / m
    return dx, dgamma, dbeta


@torch.no_grad()
def batch_norm_backward_fused(dout: torch.Tensor, cache: BatchNormCache):
    """Backward pass in closed form (the staged graph, simplified by hand).

    ``dx = gamma * inv_std / m * (m * dout - sum(dout) - x_hat * sum(dout * x_hat))``,
    with sums per channel. Returns ``(dx, dgamma, dbeta)``.
    """
    dims, m = cache.dims, cache.count
    view = lambda v: channel_view(v, dout)  # noqa: E731
    gamma = cache.gamma if cache.gamma is not None else torch.ones_like(cache.inv_std)
    x_hat = cache.x_hat
    dbeta = dout.sum(dims)
    dgamma = (dout * x_hat).sum(dims)
    scale = gamma * cache.inv_std / m
    dx = view(scale) * (m * dout - view(dbeta) - x_hat * view(dgamma))
    return dx, dgamma, dbeta


def batch_norm_eval(x, running_mean, running_var, weight, bias, eps):
    """Eval-mode batch norm: one scale and one shift per channel, applied in one pass over ``x``."""
    scale, shift = eval_scale_shift(running_mean, running_var, weight, bias, eps)
    return scale_shift(x, scale, shift)


def eval_scale_shift(running_mean, running_var, weight, bias, eps):
    """``(scale, shift)`` per channel: ``gamma * (x - mean) / sqrt(var + eps) + beta = scale * x + shift``."""
    inv_std = torch.rsqrt(running_var + eps)
    scale = inv_std if weight is None else weight * inv_std
    shift = -running_mean * scale if bias is None else torch.addcmul(bias, running_mean, scale, value=-1)
    return scale, shift


def scale_shift(x, scale, shift):
    """``scale * x + shift`` per channel, one kernel."""
    return torch.addcmul(channel_view(shift, x), x, channel_view(scale, x))


def merge_moments(counts, means, m2s) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge per-shard ``(count, mean, M2)`` into those of all shards together (Chan et al.).

    ``counts`` has shape ``(K,)``, ``means`` and ``m2s`` shape ``(K, C)``. With ``n = sum(n_k)``:
    ``mean = sum(n_k * mean_k) / n`` and ``M2 = sum(M2_k) + sum(n_k * (mean_k - mean)**2)``: the
    spread within the shards plus the spread of their means. Shards with count 0 drop out.
    Integer counts give the total ``n`` as an exact integer tensor. Nothing leaves the device.
    """
    counts = torch.as_tensor(counts, device=means.device)
    n = counts.sum()
    weight = counts.to(means.dtype)
    weights = (weight / weight.sum().clamp_min(1)).unsqueeze(1)
    mean = (weights * means).sum(0)
    m2 = m2s.sum(0) + (weight.unsqueeze(1) * (means - mean).square()).sum(0)
    return n, mean, m2


@torch.no_grad()
def update_running_stats(running_mean, running_var, mean, var, momentum, x) -> None:
    """PyTorch's exponential moving average, in place; ``running_var`` gets the unbiased variance."""
    m = x.numel() // x.shape[1]
    if running_mean is not None:
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
    if running_var is not None:
        unbiased = var.to(running_var.dtype) * (m / (m - 1))
        running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
