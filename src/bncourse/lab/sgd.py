"""Plain SGD on a classifier, step by step, with the options Chapter 6 needs.

:func:`bncourse.train.train` is the course's loop with evaluations and a progress bar; this one is
the bare loop: weight decay, batch-norm layers held in eval mode while the rest trains (fine-tuning
with frozen statistics), and a hook after every step. It returns the loss of every step.
"""

from collections.abc import Callable

import torch
from torch import nn

from ..layers import bn_layers
from .data import batches


def sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
        batch_size: int = 32, seed: int = 0, weight_decay: float = 0.0, bn_eval: bool = False,
        on_step: Callable[[int, nn.Module], None] | None = None) -> list[float]:
    """Train ``model`` with cross-entropy for ``steps`` steps of plain SGD; returns the step losses.

    ``weight_decay`` is PyTorch's (the L2 gradient ``weight_decay * w`` added to every parameter's).
    ``bn_eval=True`` keeps every batch-norm layer in eval mode (running statistics, no updates)
    while the rest of the model is in training mode. ``on_step(step, model)`` runs after each step.
    Batches are reshuffled every epoch from ``seed``; a last short batch is dropped.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if lr <= 0 or weight_decay < 0:
        raise ValueError(f"expected lr > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
    if batch_size > x.shape[0]:
        raise ValueError(f"batch_size {batch_size} is larger than the {x.shape[0]} examples")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for layer in bn_layers(model) if bn_eval else []:
        layer.eval()
    losses: list[float] = []
    while len(losses) < steps:
        for xb, yb in batches(x, y, batch_size, gen):
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(len(losses), model)
            if len(losses) == steps:
                break
    return losses
