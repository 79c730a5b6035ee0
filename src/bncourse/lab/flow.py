"""Batch norm with a stop-gradient on the batch statistics: Chapter 3's counter-example.

The forward pass is exactly batch norm's; the backward pass treats the batch mean and
variance as constants, ``dx = gamma / sqrt(var + eps) * dout``, as if they had been
computed outside the gradient step. Ioffe and Szegedy (2015, section 2) argue that a
network trained this way lets the bias before the normalization drift while the loss
does not move; this module lets the book run it, and measure where the weights' growth
comes from (:class:`FirstLayerRecord`).
"""

import numpy as np
import torch

from .. import functional as F
from ..nn import BatchNorm1d

__all__ = ["FirstLayerRecord", "StopGradBatchNorm1d", "stop_grad_batch_norm"]


def stop_grad_batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Training-mode ``batch_norm`` whose backward ignores that mu, sigma^2 depend on x.

    Same arguments as :func:`bncourse.functional.batch_norm` without ``training`` (this
    is the training-mode forward; use ``batch_norm`` itself in eval mode). The running
    statistics are updated as there.
    """
    F.check_input(input, training=True)
    for name, v in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        F.check_channel_vector(v, name, input)
    dims = F.reduce_dims(input)
    with torch.no_grad():  # the stop-gradient: autograd sees mu, sigma^2 as constants
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
    """:class:`bncourse.nn.BatchNorm1d`, with :func:`stop_grad_batch_norm` in training.

    Eval mode, parameters, buffers and ``state_dict`` are ``BatchNorm1d``'s; only the
    training-mode backward differs. Requires ``track_running_stats=True`` (the default).
    """

    def __init__(self, num_features: int, *args, **kwargs):
        super().__init__(num_features, *args, **kwargs)
        if not self.track_running_stats:
            raise ValueError(
                "StopGradBatchNorm1d expected track_running_stats=True, got False")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)
        self._check_input(input)
        self.num_batches_tracked.add_(1)
        momentum = self.momentum
        if momentum is None:  # cumulative moving average, as BatchNorm1d
            momentum = 1.0 / float(self.num_batches_tracked)
        return stop_grad_batch_norm(input, self.running_mean, self.running_var,
                                    self.weight, self.bias, momentum, self.eps)


class FirstLayerRecord:
    """What plain SGD does to a linear layer followed by batch norm, step by step.

    One probe per member: ``bn.train(..., on_step=bn.trainer.each(records))`` calls it after
    each step with the member, its gradients of that step and its batch; ``lr`` must be the
    run's rate (plain SGD), and ``linear`` the network's first layer (its input is the batch).
    ``w0``, ``b0`` and ``beta0`` keep the initial weight, bias and ``beta``. Per step it
    records, as NumPy arrays:

    * ``drift``: ``|b - b0| / |b0|``, how far the linear layer's bias has moved;
    * ``row_norm``: the mean norm of the weight rows, relative to its initial value;
    * ``gain``: the mean over the rows of ``gamma / s`` before the step, where
      ``s = sqrt(var + eps)`` is the batch standard deviation of the row's output;
    * ``first_order``: ``-2 lr * sum_rows w . grad_w``, the first-order change of
      ``sum_rows |w|^2`` (``w`` before the step); ``second_order``: ``lr^2 |grad_w|^2``.
      Their sum is the step's change of ``sum_rows |w|^2`` exactly;
    * ``along_x_hat``: ``-2 lr * sum_rows sum_i g_i x_hat_i``, where
      ``g_i = gamma dL/dy_i``, computed as ``gamma * dL/dgamma``;
    * ``constant``: ``-2 lr * sum_rows mean_i(w . u_i) * dL/db``.

    and, per row, ``bias_driven``: the sum over the steps so far of ``(gamma / s) * delta_beta``,
    ``delta_beta = -lr dL/dbeta`` the step of ``beta`` (a tensor of shape ``(out_features,)``).

    With the stop-gradient, ``dL/dx_i = g_i / s``, so ``dL/db = sum_i dL/dx_i =
    (gamma / s) dL/dbeta``: every step moves ``b`` by ``gamma / s`` times ``beta``'s step, and
    ``b - b0`` equals ``bias_driven``. Also ``w . grad_w`` is exactly
    ``sum_i g_i x_hat_i + mean_i(w . u_i) / s * sum_i g_i``, so
    ``first_order = along_x_hat + constant``. With the true backward ``dL/db = 0`` (``b``
    stays at ``b0`` whatever ``bias_driven`` is), and each row's share of ``first_order`` is
    ``eps / (var + eps)`` times its share of ``along_x_hat``: almost nothing.
    """

    def __init__(self, linear: torch.nn.Linear, norm: torch.nn.Module, lr: float):
        if (linear.bias is None or getattr(norm, "weight", None) is None
                or getattr(norm, "bias", None) is None):
            raise ValueError("FirstLayerRecord expected a linear layer with a bias, followed by a "
                             "norm layer with a weight (gamma) and a bias (beta)")
        self.linear, self.norm, self.lr = linear, norm, lr
        with torch.no_grad():
            self.w0 = linear.weight.detach().clone()
            self.b0 = linear.bias.detach().clone()
            self.beta0 = norm.bias.detach().clone()
            self.norm0 = linear.weight.norm(dim=1).mean().item()
        self.bias_driven = torch.zeros_like(self.b0)
        self._rows: list[tuple[float, ...]] = []

    @torch.no_grad()
    def __call__(self, step: int, model: torch.nn.Module, batch=None) -> None:
        w, b, gamma, beta = self.linear.weight, self.linear.bias, self.norm.weight, self.norm.bias
        if w.grad is None or beta.grad is None or batch is None:
            raise RuntimeError("FirstLayerRecord is called after an SGD step of a model that "
                               "contains its layers, with its gradients and its batch")
        lr = self.lr
        w_before = w + lr * w.grad  # plain SGD, undone
        b_before = b + lr * b.grad
        gamma_before = gamma + lr * gamma.grad
        u = batch[0]
        s = torch.sqrt((u @ w_before.T + b_before).var(0, correction=0) + self.norm.eps)
        gain = gamma_before / s
        self.bias_driven += gain * (-lr * beta.grad)
        mean_wu = w_before @ u.mean(0)  # mean over the batch of w . u_i
        self._rows.append((
            ((b - self.b0).norm() / self.b0.norm()).item(),
            w.norm(dim=1).mean().item() / self.norm0,
            (-2 * lr * (w_before * w.grad).sum()).item(),
            (lr**2 * w.grad.square().sum()).item(),
            (-2 * lr * (gamma_before * gamma.grad).sum()).item(),
            (-2 * lr * (mean_wu * b.grad).sum()).item(),
            gain.mean().item(),
        ))

    def _column(self, i: int) -> np.ndarray:
        return np.array([row[i] for row in self._rows])

    drift = property(lambda self: self._column(0))
    row_norm = property(lambda self: self._column(1))
    first_order = property(lambda self: self._column(2))
    second_order = property(lambda self: self._column(3))
    along_x_hat = property(lambda self: self._column(4))
    constant = property(lambda self: self._column(5))
    gain = property(lambda self: self._column(6))
