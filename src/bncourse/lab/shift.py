"""Internal covariate shift, injected and measured (chapter 5, part 3).

* :class:`DriftingBatchNorm1d`, :func:`drifting_mlp`: batch norm followed by noise whose mean and
  scale glide smoothly over training (a slow drift), or, with ``period=1``, jump every step.
* :func:`jitter_and_drift`: splits the movement of a tracked statistic (say, a unit's median) into
  step-to-step jitter and slow drift.
* :func:`gradient_shift`, :class:`GradientShiftTracker`: internal covariate shift as Santurkar et
  al. (2018, Definition 2.1) define it: how much a layer's gradient changes when the layers before
  it take their step.
* :class:`Probes`: several probes of one member as one (one per member, through
  :func:`bncourse.lab.trainer.each`).

Probes never change the model they look at: parameters, ``.grad`` and running statistics are left
as they were.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from .. import nn as bnn
from .benefits import NoisyBatchNorm1d
from .models import mlp
from .trainer import ProbeBatches

__all__ = ["DriftingBatchNorm1d", "GradientShiftTracker", "Probes", "drifting_mlp", "gradient_shift",
           "jitter_and_drift"]


# ------------------------------------------------------------------------------ injected drift
class DriftingBatchNorm1d(NoisyBatchNorm1d):
    """Batch norm, then a per-unit scale and shift that wander smoothly over training.

    Returns ``s_t * BN(x) + m_t``. Every ``period`` steps each unit gets a new target
    ``m ~ U(-shift, shift)``, ``s ~ U(1, max_scale)`` (as :class:`bncourse.lab.benefits.NoisyBatchNorm1d`
    draws them), and glides from the previous target to it along half a cosine, so the next layer's
    input distribution drifts slowly and steadily. ``period=1`` redraws at every step instead.

    The targets and the clock are NoisyBatchNorm1d's: per-unit keys and the buffer ``noise_step``,
    which moves one step per training-mode forward with gradients on (one per SGD step); forward
    passes under ``torch.no_grad()`` or in eval mode see the current noise and do not move it (nor
    do :func:`gradient_shift`'s passes). Eval mode applies the current noise: a slow drift is part
    of the network's state at that step.
    """

    def __init__(self, num_features: int, shift: float = 2.0, max_scale: float = 3.0,
                 period: int = 100, **kw):
        if not isinstance(period, int) or period < 1:
            raise ValueError(f"expected a period of at least 1 step (an int), got {period!r}")
        super().__init__(num_features, shift, max_scale, **kw)
        self.period = period

    def noise(self, step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m, s)``, the shift and scale of every unit at ``step`` (default: the current one)."""
        k, f = divmod(int(self.noise_step) if step is None else step, self.period)
        w = (1 - math.cos(math.pi * f / self.period)) / 2
        m, s = (1 - w) * self.draw(k) + w * self.draw(k + 1) if w else self.draw(k)
        return m, s

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._noisy(bnn.BatchNorm1d.forward(self, input))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, period={self.period}"


def drifting_mlp(sizes: Sequence[int], activation: str = "relu", shift: float = 2.0,
                 max_scale: float = 3.0, period: int = 100) -> nn.Sequential:
    """:func:`bncourse.lab.models.mlp` with ``norm="bn"``, every BN layer a DriftingBatchNorm1d."""
    model = mlp(sizes, activation, norm="bn")
    for i, m in enumerate(model):
        if isinstance(m, bnn.BatchNorm1d):
            model[i] = DriftingBatchNorm1d(m.num_features, shift, max_scale, period)
    return model


# ------------------------------------------------------------------- jitter and drift, measured
def jitter_and_drift(values: torch.Tensor, lag: int) -> tuple[float, float]:
    """``(jitter, drift)`` of statistics recorded at equally spaced steps, ``values[record, unit]``.

    Model each unit's series as a slow trend plus independent jitter of std ``sigma``. Over three
    consecutive records a slow trend is nearly straight, so ``jitter``, the rms of
    ``values[r - 1] - 2 values[r] + values[r + 1]`` divided by ``sqrt(6)``, estimates ``sigma``.
    The mean square change over ``lag`` records is the trend's, ``D**2``, plus ``2 sigma**2``; so
    ``drift = sqrt(mean((values[r + lag] - values[r])**2) - 2 jitter**2)`` (0 if negative) is the
    trend's rms move over ``lag`` records. Means run over units and records.
    """
    if values.dim() != 2 or not 1 <= lag < len(values) or len(values) < 3:
        raise ValueError(f"expected values of shape (records >= 3, units) and 1 <= lag < records, "
                         f"got shape {tuple(values.shape)} and lag {lag}")
    v = values.double()
    jitter_sq = ((v[:-2] - 2 * v[1:-1] + v[2:]) ** 2).mean().item() / 6
    change_sq = ((v[lag:] - v[:-lag]) ** 2).mean().item()
    return math.sqrt(jitter_sq), math.sqrt(max(change_sq - 2 * jitter_sq, 0.0))


# ------------------------------------------------------------- Santurkar et al.'s definition
def gradient_shift(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Internal covariate shift of every ``nn.Linear`` weight but the first (Santurkar et al. 2018,
    Definition 2.1): ``G`` is the weight's gradient at the current parameters, ``G'`` the same
    gradient, on the same batch ``(x, y)``, after every parameter registered before the weight (the
    earlier layers, with their biases and batch-norm parameters) has taken its SGD step
    ``p - lr * grad``. Returns ``(l2, cosine, norm)`` per layer: ``||G - G'||``, the cosine between
    ``G`` and ``G'`` (1 is no shift) and ``||G||``. Cross-entropy loss, training-mode forward (batch
    statistics). Injected noise is the same in every forward pass (every pass sees the buffers as
    they were, the noise clocks of :class:`~bncourse.lab.benefits.NoisyBatchNorm1d` and
    :class:`DriftingBatchNorm1d` included, and starts from the same state of the CPU or CUDA
    random stream, for layers that draw from it), so only the earlier layers' step changes ``G``;
    the model and the random streams are left as they were.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if lr <= 0:
        raise ValueError(f"expected a positive learning rate, got {lr}")
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    names = list(params)
    linears = [n + ".weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    layers = [names.index(n) for n in linears if n in params][1:]
    if not layers:
        raise ValueError("expected a model with at least two nn.Linear layers, found fewer")
    was_training = model.training
    model.train()

    cuda = [x.device] if x.device.type == "cuda" else []
    states = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda]

    def grads(theta: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        theta = {n: p.clone().requires_grad_() for n, p in theta.items()}
        buffers = {n: b.clone() for n, b in model.named_buffers()}  # statistics, noise clocks stay
        with torch.random.fork_rng(devices=cuda):  # the same injected noise in every pass
            torch.set_rng_state(states[0])
            for d, state in zip(cuda, states[1], strict=True):
                torch.cuda.set_rng_state(state, d)
            out = functional_call(model, {**theta, **buffers}, (x,))
        loss = nn.functional.cross_entropy(out, y)
        return list(torch.autograd.grad(loss, list(theta.values())))

    try:
        g = grads(params)
        l2, cos, norm = [], [], []
        for i in layers:
            stepped = {n: p - lr * gp if j < i else p
                       for j, ((n, p), gp) in enumerate(zip(params.items(), g, strict=True))}
            before, after = g[i].flatten(), grads(stepped)[i].flatten()
            l2.append((before - after).norm())
            cos.append(before @ after / (before.norm() * after.norm()))
            norm.append(before.norm())
    finally:
        model.train(was_training)
    return tuple(torch.stack(t).detach().cpu() for t in (l2, cos, norm))


@dataclass
class GradientShiftTracker:
    """Runs :func:`gradient_shift` every ``every`` steps on a fresh training batch.

    One per member, as ``on_step`` of :func:`bncourse.lab.trainer.train` through
    :func:`bncourse.lab.trainer.each`; ``lr`` is the training rate.
    ``l2[r, i]``, ``cos[r, i]`` and ``norm[r, i]`` are record r, layer i (the second Linear first).
    """

    x: torch.Tensor
    y: torch.Tensor
    lr: float
    every: int = 10
    batch_size: int = 60
    seed: int = 0
    steps: list[int] = field(default_factory=list)
    _records: list[tuple[torch.Tensor, ...]] = field(default_factory=list, repr=False)

    def __post_init__(self):
        self._batches = ProbeBatches(self.x, self.y, self.every, self.batch_size, self.seed)

    def __call__(self, step: int, model: nn.Module, batch=None) -> None:
        batch = self._batches.at(step)
        if batch is not None:
            self._records.append(gradient_shift(model, *batch, self.lr))
            self.steps.append(step)

    def _stacked(self, i: int) -> torch.Tensor:
        if not self._records:
            raise RuntimeError("nothing recorded yet: pass the tracker to train() as on_step")
        return torch.stack([r[i] for r in self._records])

    @property
    def l2(self) -> torch.Tensor:
        return self._stacked(0)

    @property
    def cos(self) -> torch.Tensor:
        return self._stacked(1)

    @property
    def norm(self) -> torch.Tensor:
        return self._stacked(2)


class Probes(dict):
    """Named probes of one member run as one: ``Probes(a=..., b=...)(step, model, batch)`` calls
    each in turn; afterwards ``probes["a"]`` is the first. One per member, through
    :func:`bncourse.lab.trainer.each`: ``train(..., on_step=each([Probes(...) for ...]))``."""

    def __call__(self, step: int, model: nn.Module, batch=None) -> None:
        for probe in self.values():
            probe(step, model, batch)
