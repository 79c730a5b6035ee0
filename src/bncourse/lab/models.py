"""The small networks the chapters train, with and without batch normalization, and their starts.

* :func:`mlp`: a fully connected network, optionally with a normalization layer in each hidden layer.
* :func:`init_weights`: Glorot/Xavier or He/Kaiming initialization with a chosen gain.
* :func:`data_init`: a data-dependent start, batch norm's transform on one batch folded into the
  weights (then trained without batch norm).
* :func:`scale_weights`: every weight times ``k`` (initialization experiments).
"""

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .. import nn as bnn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}

NORMS: dict[str, Callable[[int], nn.Module]] = {
    "bn": bnn.BatchNorm1d,  # this course's batch norm
    "torch_bn": nn.BatchNorm1d,  # PyTorch's, for side-by-side runs
    "layer": nn.LayerNorm,
    "group": lambda width: nn.GroupNorm(8, width),  # 8 groups: the width must be a multiple of 8
}

INITS = ("xavier", "kaiming")


def mlp(sizes: Sequence[int], activation: str = "relu", norm: str | None = None) -> nn.Sequential:
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]``.

    Each hidden layer is ``Linear -> norm -> activation`` (normalize before the nonlinearity, as the
    paper and the notes do). With a norm the Linear has no bias: the norm's shift replaces it.
    The last layer is a plain Linear (logits). Weights start at PyTorch's default,
    ``U(-1/sqrt(n), 1/sqrt(n))`` for a layer with ``n`` inputs (biases too), drawn as
    :func:`default_init` draws them: after the same seed, networks with and without a norm share
    their initial weights.
    """
    if len(sizes) < 2:
        raise ValueError(f"sizes needs an input and an output size, got {list(sizes)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm must be None or one of {sorted(NORMS)}, got {norm!r}")
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):  # the draws of the constructors are discarded
        for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1], strict=True):
            layers.append(nn.Linear(fan_in, fan_out, bias=norm is None))
            if norm is not None:
                layers.append(NORMS[norm](fan_out))
            layers.append(ACTIVATIONS[activation]())
        layers.append(nn.Linear(sizes[-2], sizes[-1]))
    model = nn.Sequential(*layers)
    default_init(model)
    return model


@torch.no_grad()
def default_init(model: nn.Module) -> nn.Module:
    """PyTorch's default start for every Linear layer, ``U(-1/sqrt(n), 1/sqrt(n))`` for ``n`` inputs,
    drawn weights first (every layer's), then biases. So a network with batch norm (no biases) and
    one without, built after the same seed, start from the same weights. Returns ``model``."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for m in linears:
        nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))  # as nn.Linear.reset_parameters
    for m in linears:
        if m.bias is not None:
            bound = 1 / math.sqrt(m.in_features)
            nn.init.uniform_(m.bias, -bound, bound)
    return model


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str, gain: float = 1.0) -> nn.Module:
    """Re-initialize every Linear layer of ``model`` in place; biases become 0. Returns ``model``.

    ``"xavier"`` (Glorot & Bengio, 2010): ``U(-a, a)`` with ``a = gain * sqrt(6 / (fan_in + fan_out))``,
    variance ``gain^2 * 2 / (fan_in + fan_out)``. ``"kaiming"`` (He et al., 2015): ``N(0, gain^2 / fan_in)``.
    The gain makes up for what the nonlinearity does to the variance: ``sqrt(2)`` for ReLU, 1 for
    tanh; PyTorch's ``calculate_gain`` says 1 for the sigmoid, whose slope at 0 is 1/4.
    """
    if scheme not in INITS:
        raise ValueError(f"scheme must be one of {list(INITS)}, got {scheme!r}")
    if not gain > 0:
        raise ValueError(f"gain must be positive, got {gain}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("expected a model with at least one nn.Linear layer, found none")
    for m in linears:
        if scheme == "xavier":
            nn.init.xavier_uniform_(m.weight, gain=gain)
        else:
            nn.init.normal_(m.weight, 0.0, gain / math.sqrt(m.in_features))
        if m.bias is not None:
            m.bias.zero_()
    return model


@torch.no_grad()
def data_init(model: nn.Sequential, x: torch.Tensor) -> nn.Sequential:
    """Start ``model`` where batch norm would: each hidden unit centred and scaled on the batch ``x``.

    Layer by layer from the input, each Linear but the last is rescaled and shifted so that its
    outputs on ``x`` have mean 0 and (biased) standard deviation 1 per unit: batch norm's transform
    (``gamma = 1``, ``beta = 0``) on this one batch, folded into ``W`` and ``b``. Training then
    runs without any normalization. A data-dependent initialization in the spirit of Salimans &
    Kingma (2016). For plain networks (no normalization layers). Returns ``model``.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"expected an nn.Sequential (as mlp builds), got {type(model).__name__}")
    norms = tuple(type(f(8)) for f in NORMS.values())
    if any(isinstance(m, norms) for m in model.modules()):
        raise ValueError("expected a plain network without normalization layers, found one")
    if x.dim() != 2 or len(x) < 2:
        raise ValueError(f"expected a batch x of shape (N >= 2, features), got {tuple(x.shape)}")
    hidden = [m for m in model if isinstance(m, nn.Linear)][:-1]
    if any(m.bias is None for m in hidden):
        raise ValueError("expected every hidden Linear layer to have a bias, found one without")
    h = x
    for layer in model:
        out = layer(h)
        if any(layer is m for m in hidden):
            mean, std = out.mean(0), out.std(0, unbiased=False)
            std = torch.where(std > 0, std, torch.ones_like(std))  # a constant unit is only centred
            layer.weight.div_(std[:, None])
            layer.bias.sub_(mean).div_(std)
            out = layer(h)
        h = out
    return model


@torch.no_grad()
def scale_weights(model: nn.Module, scale: float) -> nn.Module:
    """Multiply every Linear layer's weight by ``scale`` in place (initialization experiments)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.weight.mul_(scale)
    return model
