"""Batch norm at test time: running averages, exact population statistics, batch-size noise.

Conventions are PyTorch's (see :mod:`bncourse.functional`): ``new = (1 - momentum) * old +
momentum * batch``, the running variance stores the *unbiased* batch variance, ``momentum=None`` is
the cumulative average. Other frameworks' conventions are in :data:`MOMENTUM_CONVENTIONS`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .. import nn as bnn
from ..functional import channel_view, reduce_dims
from ..layers import BATCH_NORMS, bn_layers
from .stack import Stack

__all__ = [
    "MOMENTUM_CONVENTIONS",
    "KerasStyleBatchNorm",
    "MomentumConvention",
    "NoiseResult",
    "accuracy",
    "batch_stat_noise",
    "batch_statistics",
    "bn_layers",
    "effective_window",
    "ema_update",
    "ema_weights",
    "from_torch_momentum",
    "keras_to_torch",
    "mean_noise_theory",
    "population_stats",
    "power_law_slope",
    "predict",
    "recompute_bn_stats",
    "to_torch_momentum",
    "torch_to_keras",
]

# ---------------------------------------------------------------------------------------------
# Momentum conventions


@dataclass(frozen=True)
class MomentumConvention:
    """How one framework names and applies the running-average coefficient."""

    framework: str
    argument: str  # how the framework calls the coefficient
    default: float
    weighs: str  # "new": the coefficient is the weight of the new batch; "old": of the old value
    variance_stored: str  # "unbiased" or "biased" batch variance goes into the running variance
    eps: float

    @property
    def update(self) -> str:
        """The update rule, written in the framework's own terms."""
        a = self.argument
        if self.weighs == "new":
            return f"running = (1 - {a}) * running + {a} * batch"
        return f"running = {a} * running + (1 - {a}) * batch"


MOMENTUM_CONVENTIONS: dict[str, MomentumConvention] = {
    "pytorch": MomentumConvention("PyTorch nn.BatchNorm*d", "momentum", 0.1, "new", "unbiased", 1e-5),
    "keras": MomentumConvention("Keras 3 BatchNormalization", "momentum", 0.99, "old", "biased", 1e-3),
    "cs231n": MomentumConvention("CS231n assignment 2", "momentum", 0.9, "old", "biased", 1e-5),
}


def _convention(name: str) -> MomentumConvention:
    if name not in MOMENTUM_CONVENTIONS:
        raise ValueError(f"convention must be one of {sorted(MOMENTUM_CONVENTIONS)}, got {name!r}")
    return MOMENTUM_CONVENTIONS[name]


def _check_momentum(value, what: str = "momentum") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")
    return float(value)


def to_torch_momentum(value: float, convention: str) -> float:
    """The PyTorch ``momentum`` (weight of the new batch) equal to ``value`` in ``convention``."""
    value = _check_momentum(value)
    return value if _convention(convention).weighs == "new" else 1.0 - value


def from_torch_momentum(momentum: float, convention: str) -> float:
    """The value in ``convention`` equal to PyTorch's ``momentum`` (weight of the new batch)."""
    momentum = _check_momentum(momentum)
    return momentum if _convention(convention).weighs == "new" else 1.0 - momentum


def ema_update(old, batch, momentum: float, convention: str = "pytorch"):
    """One running-average update, with ``momentum`` read as ``convention`` reads it."""
    m = to_torch_momentum(momentum, convention)
    return (1.0 - m) * old + m * batch


# ---------------------------------------------------------------------------------------------
# Porting a trained layer to Keras' convention and back


class KerasStyleBatchNorm(nn.Module):
    """Batch norm on ``(N, C)`` inputs, written in Keras' ``BatchNormalization`` convention.

    Its weights are Keras' four, in Keras' order (:meth:`get_weights`): ``gamma``, ``beta``,
    ``moving_mean``, ``moving_variance``. In training, ``momentum`` (default 0.99) weighs the *old*
    moving value and the moving variance takes the *biased* batch variance; ``epsilon`` defaults to
    1e-3. In eval mode it computes what PyTorch's layer computes from its running buffers.
    """

    def __init__(self, num_features: int, momentum: float = 0.99, epsilon: float = 1e-3):
        super().__init__()
        self.momentum = _check_momentum(momentum)
        self.epsilon = epsilon
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("moving_mean", torch.zeros(num_features))
        self.register_buffer("moving_variance", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.gamma.shape[0]:
            raise ValueError(f"expected input of shape (N, {self.gamma.shape[0]}), got {tuple(x.shape)}")
        if self.training:
            mean, var = x.mean(0), x.var(0, unbiased=False)
            with torch.no_grad():
                self.moving_mean.copy_(ema_update(self.moving_mean, mean, self.momentum, "keras"))
                self.moving_variance.copy_(ema_update(self.moving_variance, var, self.momentum, "keras"))
        else:
            mean, var = self.moving_mean, self.moving_variance
        return self.gamma * (x - mean) / torch.sqrt(var + self.epsilon) + self.beta

    def get_weights(self) -> list[torch.Tensor]:
        """Copies of Keras' four weights, in Keras' order."""
        return [t.detach().clone() for t in (self.gamma, self.beta, self.moving_mean, self.moving_variance)]

    def set_weights(self, weights: Sequence[torch.Tensor]) -> None:
        """Set ``gamma``, ``beta``, ``moving_mean``, ``moving_variance`` from a list in Keras' order."""
        if len(weights) != 4:
            raise ValueError(
                f"expected 4 weights (gamma, beta, moving_mean, moving_variance), got {len(weights)}"
            )
        with torch.no_grad():
            for t, w in zip((self.gamma, self.beta, self.moving_mean, self.moving_variance), weights,
                            strict=True):
                t.copy_(torch.as_tensor(w, dtype=t.dtype))


def torch_to_keras(layer: nn.Module) -> KerasStyleBatchNorm:
    """A Keras-convention copy of a trained ``BatchNorm1d`` (PyTorch's or this course's).

    The stored statistics are copied *as they are* and ``epsilon`` is set to the layer's ``eps``:
    that reproduces the layer's eval-mode outputs. ``momentum`` is converted (``1 - momentum``),
    which matters only if training continues.
    """
    if not isinstance(layer, BATCH_NORMS) or layer.running_mean is None or not layer.affine:
        raise ValueError(f"expected an affine BatchNorm1d with running statistics, got {layer!r}")
    if layer.momentum is None:
        raise ValueError("a cumulative average (momentum=None) has no Keras momentum")
    ported = KerasStyleBatchNorm(layer.num_features, from_torch_momentum(layer.momentum, "keras"),
                                 layer.eps).to(layer.running_mean.device)
    ported.set_weights([layer.weight, layer.bias, layer.running_mean, layer.running_var])
    return ported.train(layer.training)


def keras_to_torch(layer: KerasStyleBatchNorm) -> bnn.BatchNorm1d:
    """The way back: this course's ``BatchNorm1d`` with the Keras layer's weights, copied as they are."""
    if not isinstance(layer, KerasStyleBatchNorm):
        raise TypeError(f"expected a KerasStyleBatchNorm, got {type(layer).__name__}")
    gamma, beta, mean, var = layer.get_weights()
    ported = bnn.BatchNorm1d(gamma.shape[0], eps=layer.epsilon,
                             momentum=to_torch_momentum(layer.momentum, "keras")).to(gamma.device)
    with torch.no_grad():
        for t, w in zip((ported.weight, ported.bias, ported.running_mean, ported.running_var),
                        (gamma, beta, mean, var), strict=True):
            t.copy_(w)
    return ported.train(layer.training)


# ---------------------------------------------------------------------------------------------
# Weights of past batches


def ema_weights(momentum: float | None, num_batches: int) -> tuple[torch.Tensor, float]:
    """Weight of each of ``num_batches`` batches in the running value after the last update.

    Returns ``(weights, initial)``: ``weights[i]`` is the weight of batch ``i`` (0 the first, the
    last the newest), ``initial`` that of the buffer's initial value; together they sum to 1.
    ``momentum=None`` is PyTorch's cumulative average: every batch weighs ``1 / num_batches``.
    """
    if not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")
    if momentum is None:
        return torch.full((num_batches,), 1.0 / num_batches, dtype=torch.float64), 0.0
    m = _check_momentum(momentum)
    age = torch.arange(num_batches - 1, -1, -1, dtype=torch.float64)  # the newest has age 0
    return m * (1.0 - m) ** age, (1.0 - m) ** num_batches


def effective_window(momentum: float) -> float:
    """How many equally weighted batches the running average is worth: ``(2 - m) / m``.

    Both readings give this number in the long run: the plain average of the last ``N`` batches
    has the same variance (``1 / sum(w**2)``, for independent batches) and the same mean age
    (``(1 - m) / m`` batches) as the exponential average when ``N = (2 - m) / m``.
    """
    m = _check_momentum(momentum)
    if m == 0:
        raise ValueError("momentum 0 never updates the running value: its window is infinite")
    return (2.0 - m) / m


# ---------------------------------------------------------------------------------------------
# Population statistics


class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged chunk by chunk.

    Values are shifted by the first chunk's mean, each chunk is reduced in two passes, and chunks
    are merged with the pairwise formula of Chan, Golub and LeVeque: accurate in float32 even when
    the mean is far from zero (no float64 needed, so it runs on every device).
    """

    def __init__(self) -> None:
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None  # of the shifted values
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected a chunk of shape (N, C) or (N, C, *), got shape {tuple(x.shape)}")
        x = x.detach()
        dims = reduce_dims(x)
        n = x.numel() // x.shape[1]
        if n == 0:
            return
        if self.shift is None:
            self.shift = x.mean(dims)
        elif x.shape[1] != self.shift.shape[0]:
            raise ValueError(
                f"expected {self.shift.shape[0]} channels in dim 1 as in the first chunk, got "
                f"shape {tuple(x.shape)}"
            )
        x = x - channel_view(self.shift, x)
        mean = x.mean(dims)
        m2 = (x - channel_view(mean, x)).square().sum(dims)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mean is None or self.count < 2:
            raise ValueError(f"expected at least 2 values per channel in all, got {self.count}")
        return self.shift + self.mean, self.m2 / (self.count - 1)


def population_stats(chunks: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and unbiased variance per channel (dim 1) of all chunks together.

    The chunks (e.g. the mini-batches of a data set) may differ in size; the result is the same as
    for their concatenation, without ever holding it in memory.
    """
    moments = _Moments()
    for chunk in chunks:
        if not isinstance(chunk, torch.Tensor) or not chunk.is_floating_point():
            raise TypeError(f"expected floating-point tensors, got {type(chunk).__name__}"
                            + (f" of dtype {chunk.dtype}" if isinstance(chunk, torch.Tensor) else ""))
        moments.add(chunk)
    return moments.result()


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has seen its input."""


def _call_order(model: nn.Module, layers: list[nn.Module], x: torch.Tensor) -> list[nn.Module]:
    """``layers`` in the order the forward pass calls them (on the first two examples of ``x``)."""
    order: list[nn.Module] = []
    hooks = [
        layer.register_forward_pre_hook(lambda mod, _: order.append(mod) if mod not in order else None)
        for layer in layers
    ]
    try:
        model(x[:2])
    finally:
        for h in hooks:
            h.remove()
    missing = [type(m).__name__ for m in layers if m not in order]
    if missing:
        raise ValueError(f"the forward pass never calls {len(missing)} batch norm layer(s): {missing}")
    return order


def _many(model) -> bool:
    """Whether ``model`` is a list (or tuple) of networks rather than one."""
    if isinstance(model, (list, tuple)):
        if not model or any(not isinstance(m, nn.Module) for m in model):
            raise TypeError("expected a model or a non-empty list of models (torch.nn.Module)")
        return True
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a model or a list of models, got {type(model).__name__}")
    return False


@torch.no_grad()
def recompute_bn_stats(model, x: torch.Tensor, batch_size: int = 256):
    """Set every batch norm layer's running buffers to exact population statistics over ``x``.

    Layer by layer, in the order the forward pass calls them, the running mean and running
    (unbiased) variance become the mean and variance of that layer's input over all of ``x``, as
    the network computes it in eval mode, with the earlier layers already re-estimated: the
    statistics each layer will meet at test time. ``batch_size`` only sets the chunks the data is
    passed in (memory); the result does not depend on it. Returns ``model`` (changed in place).
    ``model`` may also be a list of networks: each is re-estimated, and the list returned.
    """
    if _many(model):
        for m in model:
            recompute_bn_stats(m, x, batch_size)
        return model
    layers = bn_layers(model)
    if not layers:
        raise ValueError("the model has no batch norm layer whose statistics could be recomputed")
    for layer in layers:
        if layer.running_mean is None or layer.running_var is None:
            raise ValueError(
                f"{type(layer).__name__} has no running statistics (track_running_stats=False)"
            )
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[0] < 2:
        got = (f"dtype {x.dtype} and shape {tuple(x.shape)}" if isinstance(x, torch.Tensor)
               else type(x).__name__)
        raise ValueError(f"expected a floating-point tensor x with at least 2 examples, got {got}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    was_training = model.training
    model.eval()
    try:
        for layer in _call_order(model, layers, x):
            moments = _Moments()

            def record(mod, args, moments=moments):
                moments.add(args[0])
                raise _Stop

            hook = layer.register_forward_pre_hook(record)
            try:
                for i in range(0, x.shape[0], batch_size):
                    try:
                        model(x[i : i + batch_size])
                    except _Stop:
                        pass
            finally:
                hook.remove()
            mean, var = moments.result()
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
    finally:
        model.train(was_training)
    return model


# ---------------------------------------------------------------------------------------------
# Predicting with batch or running statistics


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the batch norm layers normalize with the statistics of each batch.

    Their running buffers are restored on exit (nothing leaks from the batches into them), and
    every module keeps its train/eval mode outside the block.
    """
    layers = bn_layers(model)
    saved = [(m.training, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in layers]
    for m in layers:
        m.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, (mode, buffers) in zip(layers, saved, strict=True):
                m.train(mode)
                for k, b in m.named_buffers(recurse=False):
                    b.copy_(buffers[k])


def _batch_index(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """A shuffled split of ``range(n)`` into ``n // batch_size`` batches of nearly equal size."""
    if not isinstance(batch_size, int) or not 2 <= batch_size <= n:
        raise ValueError(
            f"batch_size must be an int in [2, {n}] (the number of examples), got {batch_size!r}"
        )
    order = torch.randperm(n, generator=generator)
    return list(torch.tensor_split(order, n // batch_size))


@torch.no_grad()
def _predict_many_in_batches(models: Sequence[nn.Module], x: torch.Tensor, stats: str, batch_size: int,
                             generator: torch.Generator | None) -> torch.Tensor:
    """:func:`predict` in batches for S networks at once, as one wide network of copies."""
    index = [_batch_index(x.shape[0], batch_size, generator) for _ in models]  # network i: i-th draw
    stack = Stack(copy.deepcopy(list(models)))  # copies: the networks themselves are left alone
    stack.wide.eval()
    rows = torch.arange(len(models), device=x.device)[:, None]
    out = None
    with batch_statistics(stack.wide) if stats == "batch" else nullcontext():
        for parts in zip(*index, strict=True):  # batch j of every network (their sizes are equal)
            idx = torch.stack(parts).to(x.device)  # (S, B)
            logits = stack(x[idx])  # (S, B, K)
            if out is None:
                out = logits.new_empty(len(models), x.shape[0], *logits.shape[2:])
            out[rows, idx] = logits
    return out


@torch.no_grad()
def predict(model, x: torch.Tensor, stats: str = "running", batch_size: int | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) on ``x``, with the batch norm statistics ``stats``.

    Without ``batch_size``, one pass over ``x`` with the running buffers (``stats="running"``).
    With ``batch_size``, ``x`` is shuffled (with ``generator``) into ``len(x) // batch_size``
    batches (each of ``batch_size`` to ``2 * batch_size - 1`` examples), and each batch is normalized
    with its own statistics (``stats="batch"``, as training mode does, leaving the buffers
    untouched) or with the running buffers (``stats="running"``, so the batches change nothing).

    ``model`` may also be a list of S networks of one architecture (the members of
    :func:`bncourse.lab.trainer.train`): the result is then (S, N, K), network ``i``'s logits being
    what ``predict(models[i], ...)`` gives when the networks are predicted in turn with one
    ``generator`` (network ``i`` gets the ``i``-th shuffle). In batches, all S run at once, as one
    wide network of copies (:mod:`bncourse.lab.stack`); the networks are not changed.
    """
    if stats not in ("running", "batch"):
        raise ValueError(f"stats must be 'running' or 'batch', got {stats!r}")
    if stats == "batch" and batch_size is None:
        raise ValueError("stats='batch' needs a batch_size")
    if _many(model):
        if batch_size is not None:
            return _predict_many_in_batches(model, x, stats, batch_size, generator)
        return torch.stack([predict(m, x) for m in model])
    was_training = model.training
    model.eval()
    try:
        if batch_size is None:
            return model(x)
        out = None
        with batch_statistics(model) if stats == "batch" else nullcontext():
            for idx in _batch_index(x.shape[0], batch_size, generator):
                idx = idx.to(x.device)
                logits = model(x[idx])
                if out is None:
                    out = logits.new_empty(x.shape[0], *logits.shape[1:])
                out[idx] = logits
        return out
    finally:
        model.train(was_training)


def accuracy(model, x: torch.Tensor, y: torch.Tensor, stats: str = "running",
             batch_size: int | None = None, generator: torch.Generator | None = None):
    """Fraction of ``x`` that :func:`predict` classifies as ``y``: a float, or for a list of S
    networks a float64 tensor (S,)."""
    logits = predict(model, x, stats, batch_size, generator)
    right = (logits.argmax(-1) == y).double().mean(-1)
    return right.cpu() if _many(model) else right.item()


# ---------------------------------------------------------------------------------------------
# Noise of the batch statistics


@dataclass
class NoiseResult:
    """Spread of the batch statistics, relative to the population's, for each batch size.

    ``mean_std[i]``: std over batches of the batch mean, divided by the population std;
    ``var_std[i]``: std over batches of the (biased) batch variance, divided by the population
    variance; both averaged over the channels.
    """

    batch_sizes: list[int]
    mean_std: torch.Tensor
    var_std: torch.Tensor


def batch_stat_noise(x: torch.Tensor, batch_sizes: Sequence[int], trials: int = 400,
                     generator: torch.Generator | None = None, replace: bool = False) -> NoiseResult:
    """Measure how much the batch mean and variance of ``x`` (N, C) vary from batch to batch.

    For each batch size, ``trials`` batches are drawn from the rows of ``x``, without replacement
    within a batch (as in an epoch of training) unless ``replace``. Channels with zero variance
    are left out.
    """
    if x.dim() != 2:
        raise ValueError(f"expected x of shape (N, C), got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not batch_sizes or any(not isinstance(m, int) or not 2 <= m <= n for m in batch_sizes):
        raise ValueError(f"batch sizes must be ints in [2, {n}], got {list(batch_sizes)}")
    x = x.detach().double()
    pop_var = x.var(0, unbiased=False)
    x = x[:, pop_var > 0]
    pop_var = pop_var[pop_var > 0]
    if x.shape[1] == 0:
        raise ValueError("every channel of x is constant: there is no noise to measure")
    mean_std, var_std = [], []
    for m in batch_sizes:
        if replace:
            idx = torch.randint(n, (trials, m), generator=generator)
        else:  # the m largest of n uniform draws: a uniformly random set of m rows
            idx = torch.rand(trials, n, generator=generator).topk(m, 1).indices
        xb = x[idx.to(x.device)]  # (trials, m, C)
        mean_std.append((xb.mean(1).std(0) / pop_var.sqrt()).mean())
        var_std.append((xb.var(1, unbiased=False).std(0) / pop_var).mean())
    return NoiseResult(list(batch_sizes), torch.stack(mean_std).cpu(), torch.stack(var_std).cpu())


def mean_noise_theory(batch_size: int, population: int | None = None) -> float:
    """Std of the mean of ``batch_size`` draws, in units of the population std.

    ``1 / sqrt(m)`` for independent draws; drawn without replacement from ``population`` values,
    times the finite-population correction ``sqrt((N - m) / (N - 1))``.
    """
    if population is None:
        return 1.0 / math.sqrt(batch_size)
    if not 1 <= batch_size <= population:
        raise ValueError(f"expected 1 <= batch_size <= population, got {batch_size} and {population}")
    if population == 1:
        return 0.0
    return math.sqrt((population - batch_size) / (population - 1) / batch_size)


def power_law_slope(x, y) -> tuple[float, float]:
    """Least-squares fit of ``log y = slope * log x + intercept``; returns ``(slope, intercept)``."""
    lx = torch.as_tensor(x, dtype=torch.float64).log()
    ly = torch.as_tensor(y, dtype=torch.float64).log()
    if lx.shape != ly.shape or lx.numel() < 2:
        raise ValueError(f"expected x and y of the same length >= 2, got {lx.numel()} and {ly.numel()}")
    a = torch.stack([lx, torch.ones_like(lx)], 1)
    slope, intercept = torch.linalg.lstsq(a, ly.unsqueeze(1)).solution.squeeze(1).tolist()
    return slope, intercept
