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


def fine_tune(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, strategy: str, steps: int,
              lr: float, batch_size: int, seeds: Sequence[int] = (0,),
              unlabeled: torch.Tensor | None = None) -> tuple[list[nn.Module], Runs]:
    """Fine-tune copies of ``models`` (one per seed, trained together) on ``(x, y)`` with plain SGD
    under one of :data:`STRATEGIES`.

    ``"re-estimated"`` first recomputes the statistics on ``unlabeled`` (default: ``x``), inputs of
    the new data that need no labels. Returns the fine-tuned copies and the run
    (:class:`bncourse.lab.trainer.Runs`: step losses, final accuracy on ``(x, y)``).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    copies = [copy.deepcopy(m) for m in models]
    for model in copies:
        if strategy == "re-estimated":
            recompute_bn_stats(model, x if unlabeled is None else unlabeled)
        if strategy == "frozen":
            freeze_batch_norm(model)
    runs = train(copies, Split(x, y, x, y), steps, lr, seeds=seeds, batch_size=batch_size,
                 bn_eval=strategy in ("eval", "re-estimated"), progress=False)
    return runs.models, runs
