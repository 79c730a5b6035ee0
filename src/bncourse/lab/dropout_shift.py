"""Dropout before batch norm, and the variance shift it causes between training and test
(Li et al., 2019): batch norm learns the variance of its input *with* dropout's noise, and at test
time, without dropout, the input has a smaller variance than the running statistics expect."""

from collections.abc import Sequence

import torch
from torch import nn

from .. import nn as bnn
from ..functional import reduce_dims
from ..layers import bn_layers

PLACES = ("none", "before_bn", "after_bn")


def dropout_mlp(sizes: Sequence[int], p: float, where: str) -> nn.Sequential:
    """A batch-norm MLP (``Linear -> BN -> ReLU`` per hidden layer, then a Linear) with dropout:

    ``"before_bn"``: after every hidden ReLU, so every later batch norm sees dropped inputs (through
    the next Linear), and before the classifier; ``"after_bn"``: only before the classifier, after
    the last batch norm; ``"none"``: no dropout.
    """
    if where not in PLACES:
        raise ValueError(f"where must be one of {PLACES}, got {where!r}")
    if not 0 <= p < 1:
        raise ValueError(f"p must be in [0, 1), got {p}")
    layers: list[nn.Module] = []
    hidden = list(zip(sizes[:-2], sizes[1:-1], strict=True))
    for i, (fan_in, fan_out) in enumerate(hidden):
        layers += [nn.Linear(fan_in, fan_out, bias=False), bnn.BatchNorm1d(fan_out), nn.ReLU()]
        last = i == len(hidden) - 1
        if where == "before_bn" or (where == "after_bn" and last):
            layers.append(nn.Dropout(p))
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def dropout_variance_ratio(mean: float, var: float, p: float) -> float:
    """Test-time variance over training variance of a unit with ``mean`` and ``var`` after inverted
    dropout with drop probability ``p``: ``var / ((var + mean**2) / (1 - p) - mean**2)``."""
    if not 0 <= p < 1 or var < 0:
        raise ValueError(f"expected 0 <= p < 1 and var >= 0, got p={p}, var={var}")
    return var / ((var + mean**2) / (1 - p) - mean**2)


@torch.no_grad()
def variance_ratios(model: nn.Module, x: torch.Tensor) -> list[float]:
    """For each batch-norm layer, the variance of its input on ``x`` in eval mode (no dropout), per
    channel, over its running variance, averaged over the channels: 1 means no shift. Also measures
    how far new data are from the statistics a network was trained with."""
    layers = bn_layers(model)
    seen: dict[nn.Module, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.__setitem__(mod, args[0]))
             for m in layers]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return [(seen[m].var(reduce_dims(seen[m])) / m.running_var).mean().item() for m in layers]
