"""Batch norm with a stop-gradient on the batch statistics: Chapter 3's counter-example.

The forward pass is exactly batch norm's; the backward pass treats the batch mean and variance
as constants, ``dx = gamma / sqrt(var + eps) * dout``, as if they had been computed outside the
gradient step. Ioffe and Szegedy (2015, section 2) argue that a network trained this way lets the
bias before the normalization drift while the loss does not move; this module lets the book run it.
"""

import torch

from . import functional as F
from .nn import BatchNorm1d

__all__ = ["StopGradBatchNorm1d", "stop_grad_batch_norm"]


def stop_grad_batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Training-mode ``batch_norm`` whose backward ignores how mu and sigma^2 depend on ``input``.

    Same arguments as :func:`bncourse.functional.batch_norm` without ``training`` (this is the
    training-mode forward; use ``batch_norm`` itself in eval mode). The running statistics are
    updated as there.
    """
    F.check_input(input, training=True)
    for name, v in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        F.check_channel_vector(v, name, input)
    dims = F.reduce_dims(input)
    with torch.no_grad():  # the stop-gradient: mu and sigma^2 are constants for autograd
        mean = input.mean(dims)
        var = (input - F.channel_view(mean, input)).square().mean(dims)
        inv_std = torch.rsqrt(var + eps)
    view = lambda v: F.channel_view(v, input)  # noqa: E731
    out = (input - view(mean)) * view(inv_std)
    if weight is not None:
        out = out * view(weight)
    if bias is not None:
        out = out + view(bias)
    F.update_running_stats(running_mean, running_var, mean, var, momentum, input)
    return out


class StopGradBatchNorm1d(BatchNorm1d):
    """:class:`bncourse.nn.BatchNorm1d` with the stop-gradient of :func:`stop_grad_batch_norm`.

    Eval mode, parameters, buffers and ``state_dict`` are ``BatchNorm1d``'s; only the training-mode
    backward differs. Requires ``track_running_stats=True`` (the default).
    """

    def __init__(self, num_features: int, *args, **kwargs):
        super().__init__(num_features, *args, **kwargs)
        if not self.track_running_stats:
            raise ValueError("StopGradBatchNorm1d expected track_running_stats=True, got False")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)
        self._check_input(input)
        self.num_batches_tracked.add_(1)
        momentum = self.momentum
        if momentum is None:  # cumulative moving average, as BatchNorm1d
            momentum = 1.0 / float(self.num_batches_tracked)
        return stop_grad_batch_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias, momentum, self.eps
        )
