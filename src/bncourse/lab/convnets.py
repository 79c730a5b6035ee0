"""A small convolutional network for the 8x8 digits, with or without batch norm."""

from torch import nn

from .. import nn as bnn

NORMS = {"bn": bnn.BatchNorm2d, "torch_bn": nn.BatchNorm2d}


def conv_block(c_in: int, c_out: int, norm: str | None = "bn") -> nn.Sequential:
    """``Conv3x3 -> BatchNorm2d -> ReLU``; the conv has no bias when a norm follows (beta replaces it)."""
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm must be None or one of {sorted(NORMS)}, got {norm!r}")
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm is None)]
    if norm is not None:
        layers.append(NORMS[norm](c_out))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def conv_net(channels: tuple[int, int, int] = (16, 32, 32), norm: str | None = "bn",
             init: str = "default", classes: int = 10) -> nn.Sequential:
    """Three conv blocks on a flat 8x8 image (64 values): 8x8 -> pool -> 4x4 -> pool -> 2x2, then a
    linear classifier. ``init="he"`` draws conv and linear weights with He's normal init (and zero
    biases), the careful initialization a network without batch norm needs; ``"default"`` keeps
    PyTorch's."""
    if len(channels) != 3:
        raise ValueError(f"expected 3 channel counts, got {channels}")
    if init not in ("default", "he"):
        raise ValueError(f"init must be 'default' or 'he', got {init!r}")
    c1, c2, c3 = channels
    model = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        conv_block(1, c1, norm), nn.MaxPool2d(2),
        conv_block(c1, c2, norm), nn.MaxPool2d(2),
        conv_block(c2, c3, norm),
        nn.Flatten(), nn.Linear(c3 * 4, classes),
    )
    if init == "he":
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return model
