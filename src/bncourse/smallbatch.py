"""Batch norm over fewer examples than the batch: ghost batch norm, and Batch Renormalization.

:class:`GhostBatchNorm` normalizes each run of ``ghost_size`` examples of a batch with its own
statistics (Hoffer, Hubara and Soudry, 2017). It is also exactly what per-device batch norm
computes in data-parallel training: K devices sharing a batch of B normalize ghost batches of B / K.
:class:`BatchRenorm` (Ioffe, 2017) corrects the batch statistics toward the running ones, so that
training computes, within clipping bounds, what inference computes, while the gradient still flows
through the batch statistics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .autograd import BatchNormFunction
from .kernels import channel_view, check_eps, scale_shift, update_running_stats
from .layers import _BatchNorm, bn_layers
from .sync import check_layer_input, momentum_factor

__all__ = ["BatchRenorm", "GhostBatchNorm", "replace_norms"]


class GhostBatchNorm(_BatchNorm):
    """Batch norm that, in training, normalizes each ``ghost_size`` examples with their own statistics.

    Running statistics are updated once per batch with the average over its ghost batches of the
    mean and of the unbiased variance: what K data-parallel processes with per-device batch norm
    hold on average. Eval mode is plain batch norm with the running statistics. The batch size
    must be a multiple of ``ghost_size``.
    """

    def __init__(self, num_features: int, ghost_size: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        if not isinstance(ghost_size, int) or ghost_size < 1:
            raise ValueError(f"ghost_size must be a positive int, got {ghost_size!r}")
        self.ghost_size = ghost_size

    @classmethod
    def like(cls, layer: nn.Module, ghost_size: int) -> GhostBatchNorm:
        """A ghost batch norm with the settings, parameters and buffers (copied) of batch norm ``layer``."""
        floats = [t for t in (*layer.parameters(), *layer.buffers()) if t.is_floating_point()]
        factory = {"device": floats[0].device, "dtype": floats[0].dtype} if floats else {}
        ghost = cls(layer.num_features, ghost_size, layer.eps, layer.momentum, layer.affine,
                    layer.track_running_stats, **factory)
        ghost.load_state_dict(layer.state_dict())
        ghost.train(layer.training)
        return ghost

    def _check_input(self, x: torch.Tensor) -> None:
        check_layer_input(self, x)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)
        self._check_input(input)
        check_eps(self.eps, training=True)
        if input.shape[0] % self.ghost_size:
            raise ValueError(f"GhostBatchNorm(ghost_size={self.ghost_size}) expected a batch size that is a "
                             f"multiple of {self.ghost_size}, got {input.shape[0]}")
        factor = momentum_factor(self)
        # (N, C, *) -> (g, G * C, *): the G ghost batches of g side by side, as G * C channels of one
        # batch norm, which takes the statistics of each ghost batch's channels in one kernel
        g, c, rest = self.ghost_size, input.shape[1], input.shape[2:]
        ghosts = input.shape[0] // g
        x = input.reshape(ghosts, g, c, *rest).transpose(0, 1).reshape(g, ghosts * c, *rest)
        weight = None if self.weight is None else self.weight.repeat(ghosts)
        bias = None if self.bias is None else self.bias.repeat(ghosts)
        out, mean, var = BatchNormFunction.apply(x, weight, bias, self.eps)
        if self.track_running_stats:
            mean, var = mean.view(ghosts, c).mean(0), var.view(ghosts, c).mean(0)
            update_running_stats(self.running_mean, self.running_var, mean, var, factor, input[:g])
        return out.reshape(g, ghosts, c, *rest).transpose(0, 1).reshape(input.shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_size={self.ghost_size}"


class BatchRenorm(nn.Module):
    """Batch Renormalization (Ioffe, 2017, Algorithm 1) for inputs ``(N, C, *)``.

    Training: ``x_hat = (x - mu_B) / sigma_B * r + d`` with ``sigma_B = sqrt(var_B + eps)`` and
    ``r = clip(sigma_B / sigma, 1/r_max, r_max)``, ``d = clip((mu_B - mu) / sigma, -d_max, d_max)``
    taken as constants by the backward pass, which still differentiates through ``mu_B`` and
    ``sigma_B``; ``y = weight * x_hat + bias``. Then the running mean ``mu`` and running standard
    deviation ``sigma`` (buffers ``running_mean``, ``running_std``) move toward ``mu_B`` and
    ``sigma_B`` by ``momentum``. Inference: ``y = weight * (x - mu) / sigma + bias``.

    The bounds follow the paper's schedule, counted in training steps (``num_batches_tracked``):
    plain batch norm (``r = 1``, ``d = 0``) for the first ``warmup`` steps, while the running
    averages settle, then bounds relaxed linearly over ``ramp`` steps to ``r_max`` and ``d_max``.
    The defaults (0 and 0) use the full bounds from the first step. The bounds are computed on the
    device: no value comes back to the host.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, r_max: float = 3.0,
                 d_max: float = 5.0, affine: bool = True, warmup: int = 0, ramp: int = 0,
                 device=None, dtype=None):
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        if r_max < 1 or d_max < 0:
            raise ValueError(f"expected r_max >= 1 and d_max >= 0, got {r_max} and {d_max}")
        if not (isinstance(warmup, int) and isinstance(ramp, int)) or warmup < 0 or ramp < 0:
            raise ValueError(f"expected warmup and ramp as ints >= 0 (steps), got {warmup!r} and {ramp!r}")
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.r_max, self.d_max, self.warmup, self.ramp = r_max, d_max, warmup, ramp
        self.weight = nn.Parameter(torch.ones(num_features, **factory)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features, **factory)) if affine else None
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_std", torch.ones(num_features, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The bounds ``(r_max, d_max)`` of the next training step, as tensors on the layer's device."""
        done = (self.num_batches_tracked - self.warmup).to(self.running_std.dtype)
        t = (done / self.ramp if self.ramp else (done >= 0).to(done.dtype)).clamp(0, 1)
        return 1 + t * (self.r_max - 1), t * self.d_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(self, x)
        check_eps(self.eps, self.training)
        if not self.training:
            scale = 1 / self.running_std if self.weight is None else self.weight / self.running_std
            shift = -self.running_mean * scale if self.bias is None else self.bias - self.running_mean * scale
            return scale_shift(x, scale, shift)
        if self.r_max < 1 or self.d_max < 0:
            raise ValueError(f"expected r_max >= 1 and d_max >= 0, got {self.r_max} and {self.d_max}")
        x_hat, mean, var = BatchNormFunction.apply(x, None, None, self.eps)  # (x - mu_B) / sigma_B
        std = torch.sqrt(var + self.eps)
        with torch.no_grad():
            r_max, d_max = self.bounds()
            r = torch.minimum(torch.maximum(std / self.running_std, 1 / r_max), r_max)
            d = torch.minimum(torch.maximum((mean - self.running_mean) / self.running_std, -d_max), d_max)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_std.lerp_(std, self.momentum)
            self.num_batches_tracked.add_(1)
        weight = torch.ones_like(r) if self.weight is None else self.weight
        bias = torch.zeros_like(d) if self.bias is None else self.bias
        # y = weight * (x_hat * r + d) + bias: autograd differentiates weight, bias and x_hat (so mu_B
        # and sigma_B), not r and d
        return x_hat * channel_view(weight * r, x) + channel_view(weight * d + bias, x)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, r_max={self.r_max}, "
                f"d_max={self.d_max}, warmup={self.warmup}, ramp={self.ramp}, "
                f"affine={self.weight is not None}")


def replace_norms(model: nn.Module, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Replace every batch norm layer ``m`` of ``model`` (in place) by ``make(m)``; returns ``model``."""
    targets = set(map(id, bn_layers(model)))
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if id(child) in targets:
                setattr(parent, name, make(child))
    return model
