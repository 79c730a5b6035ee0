"""Weight decay on weights that batch norm makes scale-invariant.

A weight followed by batch norm can be scaled without changing the network's output (in training
mode, up to eps), so L2 on it does not constrain the function; it shrinks the weight's norm, and
the size of each step *relative to* that norm, the effective step, grows (van Laarhoven, 2017).
With plain SGD the angle a weight turns per step settles near sqrt(2 lr wd) (Wan et al., 2021).
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..layers import bn_layers
from .data import Split
from .trainer import Runs, built, train


def scale_invariant_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the Linear and Conv layers whose output goes straight into a batch norm
    (adjacent in ``model.modules()`` order, as in ``bn.models.mlp`` and ``bn.convnets``)."""
    modules = list(model.modules())
    norms = set(bn_layers(model))
    found = [a.weight for a, b in zip(modules, modules[1:], strict=False)
             if isinstance(a, nn.Linear | nn.Conv1d | nn.Conv2d) and b in norms]
    if not found:
        raise ValueError("no Linear or Conv layer directly followed by a batch norm layer")
    return found


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle between two weight tensors, in radians, computed in float64."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    cos = torch.dot(a, b) / (a.norm() * b.norm())
    return math.acos(max(-1.0, min(1.0, cos.item())))


def equilibrium_angle(lr: float, weight_decay: float) -> float:
    """The angle per step at which decay and gradient steps balance, sqrt(2 lr wd) (plain SGD)."""
    if lr <= 0 or weight_decay <= 0:
        raise ValueError(f"expected lr > 0 and weight_decay > 0, got {lr} and {weight_decay}")
    return math.sqrt(2 * lr * weight_decay)


@dataclass
class NormTrace:
    """Per member, step and scale-invariant weight: its norm after the step, the norm of the loss's
    gradient that the step used, and the angle the weight turned."""

    norms: torch.Tensor       # (members, steps + 1, layers); [:, 0] is the initial norm
    grad_norms: torch.Tensor  # (members, steps, layers)
    angles: torch.Tensor      # (members, steps, layers), radians
    runs: Runs                # the training run: losses, evaluations, the trained members


def trace_norms(models: Callable[[], nn.Module] | Sequence[nn.Module], data: Split, steps: int, lr: float,
                weight_decay: float = 0.0, batch_size: int = 32, seeds: Sequence[int] = (0,),
                eval_every: int | None = None) -> NormTrace:
    """Train with plain SGD (:func:`bncourse.lab.trainer.train`, one member per seed) and record,
    at every step, the norm of each scale-invariant weight, the norm of its gradient and the angle
    it turned.

    ``weight_decay`` acts on the scale-invariant weights only, as PyTorch's would,
    ``w' = (1 - lr wd) w - lr g``; every other parameter (the last batch norm's gamma and beta, the
    classifier, ...) trains without it, so no genuine L2 penalty enters the comparison.
    """
    if weight_decay < 0:
        raise ValueError(f"expected weight_decay >= 0, got {weight_decay}")
    members = [built(models, s) for s in seeds] if callable(models) else list(models)
    with torch.no_grad():
        previous = [[w.detach().clone() for w in scale_invariant_weights(m)] for m in members]
    norms = [[[w.norm().item() for w in ws] for ws in previous]]
    grad_norms: list = []
    angles: list = []

    @torch.no_grad()
    def record(step: int, members: list[nn.Module], _batch) -> None:
        weights = [scale_invariant_weights(m) for m in members]
        grad_norms.append([[w.grad.norm().item() for w in ws] for ws in weights])
        angles.append([[angle(p, w) for p, w in zip(ps, ws, strict=True)]
                       for ps, ws in zip(previous, weights, strict=True)])
        norms.append([[w.norm().item() for w in ws] for ws in weights])
        for ps, ws in zip(previous, weights, strict=True):
            for p, w in zip(ps, ws, strict=True):
                p.copy_(w)

    runs = train(members, data, steps, lr, seeds=seeds, batch_size=batch_size, eval_every=eval_every,
                 weight_decay=weight_decay, decay=scale_invariant_weights, on_step=record,
                 progress=False)

    def tensor(rows: list) -> torch.Tensor:  # (steps, members, layers) -> (members, steps, layers)
        return torch.tensor(rows, dtype=torch.float64).transpose(0, 1)

    return NormTrace(tensor(norms), tensor(grad_norms), tensor(angles), runs)
