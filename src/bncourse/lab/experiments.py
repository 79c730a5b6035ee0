"""Experiment probes: what a layer receives, recorded over training.

Two callbacks for :func:`bncourse.lab.trainer.train` (``on_step``; one per member through
:func:`bncourse.lab.trainer.each`) record, on a fixed probe set and per unit (per channel for
convolutional inputs), a summary of a module's input: :func:`track_percentiles` its percentiles,
:func:`track_moments` its mean and standard deviation (what batch normalization would fix). Both
take the input in eval mode (running statistics) or as a training step sees it
(``batch_stats=True``), without touching the model's running statistics or modes.
"""

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MomentTracker", "PercentileTracker", "track_moments", "track_percentiles"]


class _InputTracker:
    """Records ``summary(z)`` of the input ``z`` of ``module`` (inside ``model``) on ``x``, every
    ``every`` steps; ``z`` is reshaped to (values, units)."""

    def __init__(self, model: nn.Module, module: nn.Module, x: torch.Tensor, every: int = 1,
                 batch_stats: bool = False):
        if not any(m is module for m in model.modules()):
            raise ValueError("expected module to be a submodule inside model, got one that is not")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if not isinstance(batch_stats, bool):
            raise TypeError(f"batch_stats must be True or False, got {batch_stats!r}")
        self.module, self.x, self.every, self.batch_stats = module, x, every, batch_stats
        self.steps: list[int] = []
        self._values: list[torch.Tensor] = []

    def summary(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def record(self, step: int, model: nn.Module) -> None:
        """Record the summary now (buffers and train/eval modes left as they were)."""
        seen: list[torch.Tensor] = []
        hook = self.module.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0]))
        modes = [(m, m.training) for m in model.modules()]
        buffers = {k: b.clone() for k, b in model.named_buffers()}
        try:
            model.train(self.batch_stats)
            model(self.x)
        finally:
            hook.remove()
            for m, training in modes:
                m.training = training
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
        z = seen[0].detach()
        z = z.transpose(0, 1).reshape(z.shape[1], -1).T  # (values, units)
        self._values.append(self.summary(z).cpu())
        self.steps.append(step)

    def __call__(self, step: int, model: nn.Module, batch=None) -> None:
        if step % self.every == 0:
            self.record(step, model)

    @property
    def values(self) -> torch.Tensor:
        if not self._values:
            raise RuntimeError("nothing recorded yet: call the tracker (or use track_percentiles "
                               "or track_moments)")
        return torch.stack(self._values)


class PercentileTracker(_InputTracker):
    """Percentiles ``q`` of the input of ``module`` (inside ``model``) on ``x``, every ``every`` steps.

    ``values[t, i, u]`` is percentile ``q[i]`` of unit (channel) ``u`` at record ``t``, taken at
    ``steps[t]``. The input is taken in eval mode (running statistics), or with ``batch_stats=True``
    as in a training step (batch statistics of ``x``); either way the model's buffers and modes are
    left as they were. Call it as ``tracker(step, model)``; it records when ``step % every == 0``.
    """

    def __init__(self, model: nn.Module, module: nn.Module, x: torch.Tensor,
                 q: Sequence[float] = (15, 50, 85), every: int = 1, batch_stats: bool = False):
        if len(q) == 0 or any(not 0 <= p <= 100 for p in q):
            raise ValueError(f"expected percentiles in [0, 100], got {list(q)}")
        super().__init__(model, module, x, every=every, batch_stats=batch_stats)
        self.q = torch.tensor([float(p) / 100 for p in q], dtype=torch.float64)

    def summary(self, z: torch.Tensor) -> torch.Tensor:
        return torch.quantile(z.double(), self.q.to(z.device), dim=0).to(z.dtype)


class MomentTracker(_InputTracker):
    """Mean and (biased) standard deviation of the input of ``module`` (inside ``model``) on ``x``,
    per unit (channel), every ``every`` steps.

    ``values[t, 0, u]`` is the mean of unit ``u`` over ``x`` at record ``t`` (taken at ``steps[t]``),
    ``values[t, 1, u]`` its standard deviation: the two numbers batch normalization would set to
    0 and 1. Modes and ``batch_stats`` as in :class:`PercentileTracker`.
    """

    def summary(self, z: torch.Tensor) -> torch.Tensor:
        zd = z.double()
        mean = zd.mean(0)
        std = (zd - mean).pow(2).mean(0).sqrt()  # two passes: no cancellation
        return torch.stack([mean, std]).to(z.dtype)


def track_percentiles(model: nn.Module, module: nn.Module, x: torch.Tensor,
                      q: Sequence[float] = (15, 50, 85), every: int = 1,
                      batch_stats: bool = False) -> PercentileTracker:
    """A :class:`PercentileTracker` that has already recorded step 0."""
    tracker = PercentileTracker(model, module, x, q=q, every=every, batch_stats=batch_stats)
    tracker.record(0, model)
    return tracker


def track_moments(model: nn.Module, module: nn.Module, x: torch.Tensor, every: int = 1,
                  batch_stats: bool = False) -> MomentTracker:
    """A :class:`MomentTracker` that has already recorded step 0."""
    tracker = MomentTracker(model, module, x, every=every, batch_stats=batch_stats)
    tracker.record(0, model)
    return tracker
