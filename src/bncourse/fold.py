"""Folding batch norm into the layer before it, for inference.

In eval mode batch norm is a fixed affine map per channel, ``y = scale * z + shift`` with
``scale = gamma / sqrt(running_var + eps)`` and ``shift = beta - running_mean * scale``. When ``z`` is
the output of a Linear or Conv layer, ``z = W x + b``, the two merge into one layer:
``W' = scale * W`` (row by row, one row per output channel) and ``b' = scale * (b - mean) + beta``.
The folded model computes the same function with one layer and one pass over memory fewer.
"""

import copy

import torch
from torch import nn

from . import kernels as F
from . import nn as bnn

__all__ = ["fold_batch_norm", "fold_model"]

FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, bnn.BatchNorm1d, bnn.BatchNorm2d,
               bnn.BatchNorm3d)


@torch.no_grad()
def fold_batch_norm(layer: nn.Module, batch_norm: nn.Module) -> nn.Module:
    """A new Linear or Conv layer computing ``batch_norm(layer(x))`` with eval-mode statistics.

    The arithmetic is done in float64 and rounded once to the layer's dtype.
    """
    if not isinstance(layer, FOLDABLE):
        raise TypeError(f"expected a Linear or Conv1d/2d/3d layer to fold into, got {type(layer).__name__}")
    if batch_norm.running_mean is None:
        raise ValueError("expected a batch norm with running statistics (track_running_stats=True); "
                         "without them eval mode uses the batch's, which cannot be folded")
    out_channels = layer.weight.shape[0]
    if batch_norm.num_features != out_channels:
        raise ValueError(f"expected a batch norm over the layer's {out_channels} output channels, "
                         f"got {type(batch_norm).__name__}({batch_norm.num_features})")
    d = torch.float64
    as64 = lambda t: None if t is None else t.to(d)  # noqa: E731
    scale, shift = F.eval_scale_shift(as64(batch_norm.running_mean), as64(batch_norm.running_var),
                                      as64(batch_norm.weight), as64(batch_norm.bias), batch_norm.eps)
    if layer.bias is not None:
        shift = shift + scale * layer.bias.to(d)
    folded = copy.deepcopy(layer)
    dtype = layer.weight.dtype
    per_row = scale.reshape(-1, *([1] * (layer.weight.dim() - 1)))
    folded.weight.copy_((layer.weight.to(d) * per_row).to(dtype))
    folded.bias = nn.Parameter(shift.to(dtype))
    return folded


def fold_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference, every Linear/Conv followed by a batch norm folded into one.

    Pairs are found inside ``nn.Sequential`` containers, at any depth (in other modules the order of
    the children need not be the order of the computation). Each folded batch norm is replaced by
    ``nn.Identity``. The copy is in eval mode; ``model`` is left as it is.
    """
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            layer, batch_norm = module._modules[first], module._modules[second]
            if isinstance(layer, FOLDABLE) and isinstance(batch_norm, BATCH_NORMS) \
                    and batch_norm.running_mean is not None:
                module._modules[first] = fold_batch_norm(layer, batch_norm)
                module._modules[second] = nn.Identity()
    return model
