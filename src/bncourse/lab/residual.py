"""A small fully connected residual network, and the zero-gamma initialization of its branches.

Each block is the fully connected version of a ResNet basic block,
``relu(x + BN(W2 relu(BN(W1 x))))``. Setting the scale gamma of each branch's last batch norm to
zero (Goyal et al., 2017) makes every block the identity at the start of training.
"""

import torch
from torch import nn

from .. import nn as bnn


class ResidualBlock(nn.Module):
    """``relu(x + branch(x))``, the branch ``Linear -> BN -> ReLU -> Linear -> BN``."""

    def __init__(self, width: int):
        super().__init__()
        self.branch = nn.Sequential(
            nn.Linear(width, width, bias=False), bnn.BatchNorm1d(width), nn.ReLU(),
            nn.Linear(width, width, bias=False), bnn.BatchNorm1d(width),
        )

    @property
    def last_bn(self) -> bnn.BatchNorm1d:
        """The batch norm that closes the branch (its gamma scales what the block adds)."""
        return self.branch[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.branch(x))


def residual_mlp(depth: int, width: int = 64, inputs: int = 64, classes: int = 10,
                 zero_init: bool = False) -> nn.Sequential:
    """``Linear -> BN -> ReLU``, then ``depth`` residual blocks, then a linear classifier.

    ``zero_init=True`` starts the gamma of every branch's last batch norm at 0.
    """
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    model = nn.Sequential(
        nn.Linear(inputs, width, bias=False), bnn.BatchNorm1d(width), nn.ReLU(),
        *[ResidualBlock(width) for _ in range(depth)],
        nn.Linear(width, classes),
    )
    if zero_init:
        zero_init_residual(model)
    return model


def zero_init_residual(model: nn.Module) -> nn.Module:
    """Set gamma of the last batch norm of every residual branch to 0, in place; returns ``model``."""
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    if not blocks:
        raise ValueError("the model has no ResidualBlock whose branch could be zeroed")
    for block in blocks:
        nn.init.zeros_(block.last_bn.weight)
    return model


@torch.no_grad()
def stream_std(model: nn.Sequential, x: torch.Tensor) -> list[float]:
    """The standard deviation of the residual stream after each block, on ``x`` in training mode
    (the batch statistics a first training step sees). The running buffers are left unchanged."""
    states = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    stds = []
    h = x
    for module in model:
        h = module(h)
        if isinstance(module, ResidualBlock):
            stds.append(h.std().item())
    model.load_state_dict(states)
    model.train(was_training)
    return stds
