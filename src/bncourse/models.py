"""The small networks the chapters train, with and without batch normalization."""

from collections.abc import Callable, Sequence

from torch import nn

from . import nn as bnn

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


def mlp(sizes: Sequence[int], activation: str = "relu", norm: str | None = None) -> nn.Sequential:
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]``.

    Each hidden layer is ``Linear -> norm -> activation`` (normalize before the nonlinearity, as the
    paper and the notes do). With a norm the Linear has no bias: the norm's shift replaces it.
    The last layer is a plain Linear (logits).
    """
    if len(sizes) < 2:
        raise ValueError(f"sizes needs an input and an output size, got {list(sizes)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm must be None or one of {sorted(NORMS)}, got {norm!r}")
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers.append(nn.Linear(fan_in, fan_out, bias=norm is None))
        if norm is not None:
            layers.append(NORMS[norm](fan_out))
        layers.append(ACTIVATIONS[activation]())
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def scale_weights(model: nn.Module, scale: float) -> nn.Module:
    """Multiply every Linear layer's weight by ``scale`` in place (initialization experiments)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.weight.data.mul_(scale)
    return model
