"""Weight decay on weights that batch norm makes scale-invariant.

A weight followed by batch norm can be scaled without changing the network's output (in training
mode, up to eps), so L2 on it does not constrain the function; it shrinks the weight's norm, and
the size of each step *relative to* that norm, the effective step, grows (van Laarhoven, 2017).
With plain SGD the angle a weight turns per step settles, as a root mean square over steps, near
sqrt(2 lr wd) (Wan et al., 2021); its plain mean lies below, since the angle fluctuates.
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
    """The angle per step at which decay and gradient steps balance, sqrt(2 lr wd) (plain SGD): the
    root mean square of the angle over steps, where on average lr^2 |g|^2 = 2 lr wd |w|^2."""
    if lr <= 0 or weight_decay <= 0:
        raise ValueError(f"expected lr > 0 and weight_decay > 0, got {lr} and {weight_decay}")
    return math.sqrt(2 * lr * weight_decay)


@dataclass
class NormTrace:
    """Per member, step and scale-invariant weight, in float64: its norm after the step, the norm of
    the loss's gradient that the step used, and the angle the weight turned."""

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
    weights = [scale_invariant_weights(m) for m in members]  # the same Parameters throughout
    layers = len(weights[0])
    norms = torch.zeros(len(members), steps + 1, layers, dtype=torch.float64)
    grad_norms = torch.zeros(len(members), steps, layers, dtype=torch.float64)
    angles = torch.zeros(len(members), steps, layers, dtype=torch.float64)

    def rows(grad: bool = False) -> list[torch.Tensor]:
        """Per layer, every member's weight (or its gradient) as one row: (members, size), float64."""
        return [torch.stack([(ws[j].grad if grad else ws[j]).detach().flatten() for ws in weights])
                .cpu().double() for j in range(layers)]

    with torch.no_grad():
        previous = rows()
    norms[:, 0] = torch.stack([w.norm(dim=1) for w in previous], 1)

    @torch.no_grad()
    def record(step: int, _members, _batch) -> None:
        current = rows()
        grad_norms[:, step - 1] = torch.stack([g.norm(dim=1) for g in rows(grad=True)], 1)
        for j, (p, w) in enumerate(zip(previous, current, strict=True)):
            w_norm = w.norm(dim=1)
            cos = (p * w).sum(1) / (p.norm(dim=1) * w_norm)
            angles[:, step - 1, j] = torch.acos(cos.clamp(-1.0, 1.0))
            norms[:, step, j] = w_norm
        previous[:] = current

    runs = train(members, data, steps, lr, seeds=seeds, batch_size=batch_size, eval_every=eval_every,
                 weight_decay=weight_decay, decay=scale_invariant_weights, on_step=record,
                 progress=False)
    return NormTrace(norms, grad_norms, angles, runs)
