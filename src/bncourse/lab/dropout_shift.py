"""Dropout before batch norm, and the variance shift it causes between training and test
(Li et al., 2019): batch norm learns the variance of its input *with* dropout's noise, and at test
time, without dropout, the input has a smaller variance than the running statistics expect."""

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass
class LinearShift:
    """What the formula for dropout -> Linear -> batch norm predicts for one batch-norm layer, from
    the statistics of the units that enter the dropout (averaged over the layer's channels).

    ``layer``: the batch-norm layer's position among the model's batch-norm layers (1 = first).
    ``predicted``: test over training variance, ``w^T S w / (w^T S w + noise)`` with ``S`` the units'
    covariance. ``independent``: the same with the covariances left out (``S`` diagonal); at most
    ``1 - p``. ``covariance_share``: the part of the signal ``w^T S w`` that the covariances supply.
    ``mean_correlation``: the mean correlation coefficient over all pairs of units.
    """

    layer: int
    predicted: float
    independent: float
    covariance_share: float
    mean_correlation: float


@torch.no_grad()
def linear_shift(model: nn.Sequential, x: torch.Tensor) -> list[LinearShift]:
    """For every batch-norm layer of ``model`` (a Sequential) fed by ``Dropout -> Linear``: the
    variance shift the formula predicts from the units entering the dropout, measured on ``x`` in
    eval mode (the inputs the test sees).

    Per output channel with weights ``w``, the signal is ``w^T S w`` and dropout's noise
    ``p / (1 - p) * sum_j w_j^2 E[h_j^2]``; the ratios are averaged over the channels. The formula
    holds exactly where the units are distributed alike in training and at test time, as behind
    the first dropout; deeper down, the units themselves have shrunk at test time.
    """
    layers = bn_layers(model)
    modules = list(model)
    found, h = [], x
    was_training = model.training
    model.eval()
    try:
        for i, module in enumerate(modules):
            if (isinstance(module, nn.Dropout) and i + 2 < len(modules)
                    and isinstance(modules[i + 1], nn.Linear) and modules[i + 2] in layers):
                found.append(_shift_terms(h, modules[i + 1].weight, module.p,
                                          layers.index(modules[i + 2]) + 1))
            h = module(h)
    finally:
        model.train(was_training)
    if not found:
        raise ValueError("the model has no Dropout -> Linear -> batch norm to measure")
    return found


def _shift_terms(h: torch.Tensor, weight: torch.Tensor, p: float, layer: int) -> LinearShift:
    h = h.double()
    w = weight.double()
    mean, cov = h.mean(0), torch.cov(h.T)
    var = cov.diagonal()
    signal = torch.einsum("ci,ij,cj->c", w, cov, w)
    diagonal = (w**2 * var).sum(1)
    noise = p / (1 - p) * (w**2 * (var + mean**2)).sum(1)
    std = var.sqrt()
    live = std > 0
    corr = cov[live][:, live] / (std[live, None] * std[None, live])
    pairs = ~torch.eye(len(corr), dtype=torch.bool, device=corr.device)
    return LinearShift(layer, (signal / (signal + noise)).mean().item(),
                       (diagonal / (diagonal + noise)).mean().item(),
                       ((signal - diagonal) / signal).mean().item(), corr[pairs].mean().item())
