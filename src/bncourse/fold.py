"""Folding batch norm into the layer before it, for inference.

In eval mode batch norm is a fixed affine map per channel, ``y = scale * z + shift`` with
``scale = gamma / sqrt(running_var + eps)`` and ``shift = beta - running_mean * scale``. When ``z`` is
the output of a Linear or Conv layer, ``z = W x + b``, the two merge into one layer:
``W' = scale * W`` (row by row, one row per output channel) and ``b' = scale * (b - mean) + beta``.
The folded model computes the same function with one layer and one pass over memory fewer.
"""

import copy
import warnings
from collections import Counter

import torch
from torch import fx, nn

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


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with the layers folding works on kept whole (ours too, not only torch's)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, FOLDABLE + BATCH_NORMS) or super().is_leaf_module(m, qualname)


def fold_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference, every Linear/Conv whose output goes only into a batch norm
    folded with it into one layer.

    The pairs are found in the model's computation, traced by ``torch.fx`` as PyTorch's own fusion
    (``torch.fx.experimental.optimization.fuse``) finds them: at any depth and whatever the
    attributes are called (torchvision's ``conv1``/``bn1`` too). A pair is left unfolded when the
    layer's output is also used elsewhere, or when the layer or the batch norm is called more than
    once. The copy is a ``torch.fx.GraphModule`` in eval mode, without the folded batch norms;
    ``model`` is left as it is.

    A model that torch.fx cannot trace (control flow that depends on the data) is folded the way
    its ``nn.Sequential`` containers show, neighbour by neighbour, with a warning: there the order of
    other modules' children need not be the order of the computation.
    """
    model = copy.deepcopy(model).eval()
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # fx raises many kinds: TraceError, TypeError, ...
        warnings.warn(f"fold_model: torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: "
                      f"{e}); folding only neighbours inside nn.Sequential containers",
                      RuntimeWarning, stacklevel=2)
        return _fold_sequentials(model)
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    for node in list(graph.nodes):
        norm = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(norm, BATCH_NORMS) or len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        layer = modules.get(source.target) if isinstance(source, fx.Node) \
            and source.op == "call_module" else None
        if isinstance(layer, FOLDABLE) and _foldable(layer, norm) and len(source.users) == 1 \
                and calls[source.target] == 1 and calls[node.target] == 1:
            parent, _, name = source.target.rpartition(".")
            setattr(model.get_submodule(parent), name, fold_batch_norm(layer, norm))
            node.replace_all_uses_with(source)
            graph.erase_node(node)
    folded = fx.GraphModule(model, graph, class_name=type(model).__name__)
    folded.delete_all_unused_submodules()
    return folded.eval()


def _foldable(layer: nn.Module, batch_norm: nn.Module) -> bool:
    return batch_norm.running_mean is not None and batch_norm.num_features == layer.weight.shape[0]


def _fold_sequentials(model: nn.Module) -> nn.Module:
    """Fold neighbours inside ``nn.Sequential`` containers, in place; each folded batch norm becomes
    ``nn.Identity``."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            layer, batch_norm = module._modules[first], module._modules[second]
            if isinstance(layer, FOLDABLE) and isinstance(batch_norm, BATCH_NORMS) \
                    and _foldable(layer, batch_norm):
                module._modules[first] = fold_batch_norm(layer, batch_norm)
                module._modules[second] = nn.Identity()
    return model
