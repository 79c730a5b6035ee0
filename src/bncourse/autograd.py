"""A ``torch.autograd.Function`` that runs this package's batch norm kernels."""

import torch
from torch.autograd.function import once_differentiable

from .kernels import BatchNormCache
from .tuned import batch_norm_backward_fused, batch_norm_forward


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm on the tuned kernels of :mod:`bncourse.tuned`.

    ``apply(x, weight, bias, eps)`` returns ``(out, mean, var)``: the biased batch statistics come
    out too (not differentiable) so the caller can update running averages without recomputing them.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        out, cache = batch_norm_forward(x, weight, bias, eps)
        # x is kept as PyTorch keeps it (no extra memory); x - mean is recomputed in the backward.
        ctx.save_for_backward(x, cache.mean, cache.inv_std, weight)
        ctx.eps = eps
        ctx.mark_non_differentiable(cache.mean, cache.var)
        return out, cache.mean, cache.var

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, _dmean, _dvar):
        x, mean, inv_std, weight = ctx.saved_tensors
        cache = BatchNormCache(x, mean, None, inv_std, weight, ctx.eps)
        dx, dgamma, dbeta = batch_norm_backward_fused(dout.contiguous(), cache)
        need_x, need_weight, need_bias, _ = ctx.needs_input_grad
        return dx if need_x else None, dgamma if need_weight else None, dbeta if need_bias else None, None
