"""Synchronized batch norm: the statistics of the whole global batch, across processes.

In data-parallel training each of K processes holds a shard of the batch. ``SyncBatchNorm``
normalizes every shard with the statistics of all of them, on ``torch.distributed``. Forward: each
process computes, per channel, its count ``n_k``, mean ``mu_k`` and centred sum of squares
``M2_k = sum((x - mu_k)**2)``; one all-gather brings every process the ``2C + 1`` numbers of every
other (the count as an exact 64-bit integer), and each merges them with the parallel formula of
Chan, Golub and LeVeque (:func:`merge_moments`). Every term of the merge is a sum of squares of
centred values, so float32 stays accurate when the data sits far from zero. Backward: one
all-reduce of the two per-channel sums the input gradient needs, ``sum(dy)`` and
``sum(dy * (x - mu))``. The gradients of ``weight`` and ``bias`` stay local: data-parallel training
(``DistributedDataParallel``) reduces them as it reduces every other parameter's.

No value ever comes back to the host: the counts, the global count and the check that the global
batch holds more than one value per channel stay on the device (``torch._assert_async``), so a GPU
never waits for the CPU inside the layer, as in PyTorch's own implementation. ``process_group``
synchronizes a subgroup of the processes (see ``torch.distributed.new_group``).

It is tested on gloo (CPUs). The same calls are what NCCL (GPUs) runs, but this package's NCCL tests
need a machine with GPUs and say so when they are skipped.

Eval mode communicates nothing. Without an initialized process group, or in a group of one, the
layer is plain batch norm (:class:`bncourse.nn.BatchNorm1d` and its siblings).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.function import once_differentiable

from .kernels import channel_view, merge_moments
from .layers import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm
from .tuned import channel_sum, channel_sums

__all__ = ["SyncBatchNorm", "SyncBatchNormFunction", "local_moments", "merge_moments", "pack_moments",
           "unpack_moments"]


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 statistics for float64 input, float32 for every narrower type."""
    return torch.promote_types(x.dtype, torch.float32)


def local_moments(x: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Per-channel ``(count, mean, M2)`` of ``x`` (N, C, *), with ``M2 = sum((x - mean)**2)``.

    Two passes, the second corrected for the rounding of the mean (as :mod:`bncourse.tuned`). An
    empty ``x`` gives count 0 and zero mean and ``M2``.
    """
    channels = x.shape[1]
    count = x.numel() // channels if channels else 0
    x = x.to(_stats_dtype(x))
    if count == 0:
        zeros = x.new_zeros(channels)
        return 0, zeros, zeros.clone()
    mean = channel_sum(x) / count
    centred = x - channel_view(mean, x)
    sum_centred, m2 = channel_sums(centred, centred)
    return count, mean, m2 - sum_centred * sum_centred / count


def pack_moments(count: int, mean: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """One tensor for the all-gather: the count's 8 bytes (an int64, bit for bit), then mean, M2.

    The count takes one slot of float64 or two of float32; the all-gather copies bytes and never
    computes with them, so the count arrives exact (a float32 count is exact only to 2**24).
    """
    bits = torch.full((1,), count, dtype=torch.int64, device=mean.device).view(mean.dtype)
    return torch.cat([bits, mean, m2])


def unpack_moments(gathered: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(counts, means, m2s)`` of every process from the all-gathered ``(K, slots + 2C)`` tensor."""
    slots = gathered.shape[1] - 2 * channels
    counts = gathered[:, :slots].contiguous().view(torch.int64).squeeze(1)
    return counts, gathered[:, slots:slots + channels], gathered[:, slots + channels:]


def _all_gather(t: torch.Tensor, group) -> torch.Tensor:
    """Every process's ``t``, stacked in rank order: shape ``(K, *t.shape)``."""
    size = dist.get_world_size(group)
    out = t.new_empty(size * t.numel())
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, t.contiguous().view(-1), group=group)
    return out.view(size, *t.shape)


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm over the shards of every process in ``group``.

    ``apply(x, weight, bias, eps, group)`` returns ``(out, mean, var)``: the output for this
    process's shard, and the mean and *unbiased* variance of the global batch (not differentiable),
    the same on every process, for the running statistics.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group):
        count, mean_k, m2_k = local_moments(x)
        gathered = _all_gather(pack_moments(count, mean_k, m2_k), group)  # count, means, M2 of all
        n, mean, m2 = merge_moments(*unpack_moments(gathered, x.shape[1]))
        # checked on the device: on a GPU a failure shows at a later kernel launch, with no wait here
        torch._assert_async(n > 1, "expected more than 1 value per channel when training, in the "
                            f"global batch of the process group (this process's input has shape "
                            f"{tuple(x.shape)})")
        n = n.to(mean.dtype)
        inv_std = torch.rsqrt(m2 / n + eps)
        scale = inv_std if weight is None else weight * inv_std
        out = x.to(mean.dtype) - channel_view(mean, x)  # (x - mean) * scale + bias, in place
        if bias is None:
            out.mul_(channel_view(scale, x))
        else:
            torch.addcmul(channel_view(bias, x), out, channel_view(scale, x), out=out)
        ctx.save_for_backward(x, mean, inv_std, weight, n)
        ctx.group = group
        var = m2 / (n - 1)
        ctx.mark_non_differentiable(mean, var)
        return out.to(x.dtype), mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, _dmean, _dvar):
        x, mean, inv_std, weight, n = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        channels = x.shape[1]
        dout = dout.contiguous().to(mean.dtype)
        centred = x.to(mean.dtype) - channel_view(mean, x)
        if x.numel():
            sum_dy, sum_dy_xmu = channel_sums(dout, centred)
        else:  # an empty shard still takes part in the all-reduce
            sum_dy, sum_dy_xmu = mean.new_zeros(channels), mean.new_zeros(channels)
        dweight = sum_dy_xmu * inv_std if need_weight else None  # this shard's share
        dbias = sum_dy if need_bias else None
        dx = None
        if need_x:
            sums = torch.cat([sum_dy, sum_dy_xmu])
            dist.all_reduce(sums, group=ctx.group)
            sum_dy, sum_dy_xmu = sums[:channels], sums[channels:]
            scale = inv_std if weight is None else weight * inv_std
            # dx = scale * (dy - sum(dy) / n - (x - mean) * inv_std**2 * sum(dy * (x - mean)) / n)
            dx = torch.addcmul(channel_view(-scale * sum_dy / n, x), centred,
                               channel_view(-scale * inv_std**2 * sum_dy_xmu / n, x))
            dx = dx.addcmul_(dout, channel_view(scale, x)).to(x.dtype)
        return dx, dweight, dbias, None, None


def check_layer_input(layer: nn.Module, x: torch.Tensor) -> None:
    """Raise a clear error unless ``x`` is a tensor ``(N, C, *)`` with ``layer.num_features`` channels."""
    name = type(layer).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} expected an input (N, C, *) of at least 2 dims, got {x.dim()}D input of "
                         f"shape {tuple(x.shape)}")
    if x.shape[1] != layer.num_features:
        raise ValueError(f"{name}({layer.num_features}) expected {layer.num_features} channels in dim 1, "
                         f"got {x.shape[1]} (input of shape {tuple(x.shape)})")


def momentum_factor(layer: _BatchNorm) -> float:
    """The running-average weight of this step, counting it in ``num_batches_tracked`` (as PyTorch)."""
    factor = 0.0 if layer.momentum is None else layer.momentum
    if layer.training and layer.track_running_stats:
        layer.num_batches_tracked.add_(1)
        if layer.momentum is None:  # cumulative moving average
            factor = 1.0 / float(layer.num_batches_tracked)
    return factor


class SyncBatchNorm(_BatchNorm):
    """Batch norm over the global batch of a process group; a drop-in for ``torch.nn.SyncBatchNorm``.

    Same constructor, parameters, buffers and ``state_dict`` as PyTorch's, for any input
    ``(N, C, *)``; unlike PyTorch's it also runs on CPUs (gloo). It synchronizes in training mode
    inside an initialized process group of more than one process (``process_group``, default the
    whole world; a subgroup from ``torch.distributed.new_group`` synchronizes only its members);
    otherwise it is plain batch norm. It makes no host sync in forward or backward.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group=None,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.process_group = process_group

    def _check_input(self, x: torch.Tensor) -> None:
        check_layer_input(self, x)

    def _sync_group(self):
        """The process group to synchronize over now, or None (eval mode, no group, a group of one)."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group or dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self._sync_group()
        if group is None:
            return super().forward(input)
        self._check_input(input)
        out, mean, var = SyncBatchNormFunction.apply(input, self.weight, self.bias, self.eps, group)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum  # None: the cumulative average, 1 / steps, kept on the device
                if factor is None:
                    factor = self.num_batches_tracked.reciprocal().to(self.running_mean.dtype)
                for buffer, value in ((self.running_mean, mean), (self.running_var, var)):
                    buffer.mul_(1 - factor).add_(value.to(buffer.dtype) * factor)
        return out

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group=None) -> nn.Module:
        """Replace every batch norm layer of ``module`` (PyTorch's and this course's) by a SyncBatchNorm.

        The new layers share the old ones' parameters and buffers and keep their train/eval mode.
        Returns ``module`` (a new layer if ``module`` itself is a batch norm layer).
        """
        converted = module
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d)):
            converted = cls(
                module.num_features, module.eps, module.momentum, module.affine,
                module.track_running_stats, process_group, bias=module.bias is not None,
            )
            if module.affine:
                converted.weight, converted.bias = module.weight, module.bias
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
            converted.train(module.training)
            if hasattr(module, "qconfig"):
                converted.qconfig = module.qconfig
        for name, child in module.named_children():
            converted.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return converted
