"""Fine-tuning a trained batch-norm network: what its batch-norm layers do meanwhile.

Four strategies (Chapter 6): ``"train"`` (the layers in training mode: batch statistics, updated
running ones), ``"eval"`` (the layers in eval mode: the old running statistics, gamma and beta still
trained), ``"frozen"`` (the layers replaced by :class:`FrozenBatchNorm`, statistics and gamma, beta
fixed, as detection libraries do) and ``"re-estimated"`` (statistics recomputed on the new inputs,
then held as in ``"eval"``).
"""

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..layers import bn_layers
from .data import Split
from .inference import recompute_bn_stats
from .trainer import Runs, train

STRATEGIES = ("train", "eval", "frozen", "re-estimated")


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics and a fixed scale and shift: a per-channel affine map.

    Everything is a buffer (no parameters for an optimizer to change), named as in
    ``torch.nn.BatchNorm*d`` so their ``state_dict`` loads; it behaves the same in train and eval
    mode, so a later ``model.train()`` cannot turn its statistics back on. As
    ``torchvision.ops.FrozenBatchNorm2d``, for inputs (N, C) or (N, C, *).
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        for key, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(key, torch.full((num_features,), value))

    @classmethod
    def from_batch_norm(cls, layer: nn.Module) -> "FrozenBatchNorm":
        """A frozen copy of a trained batch-norm layer (its current statistics, gamma and beta)."""
        frozen = cls(layer.num_features, layer.eps).to(layer.running_mean)
        with torch.no_grad():
            for key in ("running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(layer, key))
            if layer.weight is not None:
                frozen.weight.copy_(layer.weight)
            if layer.bias is not None:
                frozen.bias.copy_(layer.bias)
        return frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"FrozenBatchNorm({self.num_features}) expected an input (N, "
                             f"{self.num_features}, *), got shape {tuple(x.shape)}")
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.reshape(view) + shift.reshape(view)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batch_norm(model: nn.Module) -> nn.Module:
    """Replace every batch-norm layer of ``model`` by its :class:`FrozenBatchNorm`, in place."""
    targets = set(bn_layers(model))
    if not targets:
        raise ValueError("the model has no batch norm layer to freeze")
    for parent in model.modules():
        for name, child in parent.named_children():
            if child in targets:
                setattr(parent, name, FrozenBatchNorm.from_batch_norm(child))
    return model


def _per_member(value, size: int, what: str) -> list:
    """``value`` for every member: one tensor shared by all, or a sequence of one per member."""
    if value is None or isinstance(value, torch.Tensor):
        return [value] * size
    values = list(value)
    if len(values) != size:
        raise ValueError(f"expected one {what} tensor or one per model ({size}), got {len(values)}")
    return values


def fine_tune(models: Sequence[nn.Module], x, y, strategy: str, steps: int, lr: float | Sequence[float],
              batch_size: int, seeds: Sequence[int] = (0,), unlabeled=None,
              test: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[list[nn.Module], Runs]:
    """Fine-tune copies of ``models`` (one per seed, trained together) on ``(x, y)`` with plain SGD
    under one of :data:`STRATEGIES`.

    ``x``, ``y`` (and ``unlabeled``): one tensor for every model, or a sequence of one per model
    (equal sizes): each member fine-tunes on its own labelled sample. ``"re-estimated"`` first
    recomputes the statistics on ``unlabeled`` (default: the member's ``x``), inputs of the new data
    that need no labels. ``test``: the ``(x, y)`` the run evaluates on at the start and at the end
    (default: the member's training data). Returns the fine-tuned copies and the run
    (:class:`bncourse.lab.trainer.Runs`: step losses, accuracies at step 0 and at the end).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    copies = [copy.deepcopy(m) for m in models]
    xs, ys = _per_member(x, len(copies), "x"), _per_member(y, len(copies), "y")
    extra = _per_member(unlabeled, len(copies), "unlabeled")
    for model, xm, um in zip(copies, xs, extra, strict=True):
        if strategy == "re-estimated":
            recompute_bn_stats(model, xm if um is None else um)
        if strategy == "frozen":
            freeze_batch_norm(model)
    splits = [Split(xm, ym, *(test or (xm, ym))) for xm, ym in zip(xs, ys, strict=True)]
    data = splits[0] if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) else splits
    runs = train(copies, data, steps, lr, seeds=seeds, batch_size=batch_size,
                 bn_eval=strategy in ("eval", "re-estimated"), progress=False)
    return runs.models, runs
