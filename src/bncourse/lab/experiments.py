"""Experiment probes: what a layer receives, recorded over training.

:func:`track_percentiles` returns a :class:`PercentileTracker`, a callback for
:func:`bncourse.lab.trainer.train` (``on_step``) that records percentiles of a module's input on a fixed
probe set, per unit (per channel for convolutional inputs), in eval mode (running statistics) or
as a training step sees it (``batch_stats=True``), without touching the model's running statistics.
"""

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["PercentileTracker", "track_percentiles"]


class PercentileTracker:
    """Percentiles ``q`` of the input of ``module`` (inside ``model``) on ``x``, every ``every`` steps.

    ``values[t, i, u]`` is percentile ``q[i]`` of unit (channel) ``u`` at record ``t``, taken at
    ``steps[t]``. The input is taken in eval mode (running statistics), or with ``batch_stats=True``
    as in a training step (batch statistics of ``x``); either way the model's buffers and modes are
    left as they were. Call it as ``tracker(step, model)``; it records when ``step % every == 0``.
    """

    def __init__(self, model: nn.Module, module: nn.Module, x: torch.Tensor,
                 q: Sequence[float] = (15, 50, 85), every: int = 1, batch_stats: bool = False):
        if not any(m is module for m in model.modules()):
            raise ValueError("expected module to be a submodule inside model, got one that is not")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if len(q) == 0 or any(not 0 <= p <= 100 for p in q):
            raise ValueError(f"expected percentiles in [0, 100], got {list(q)}")
        if not isinstance(batch_stats, bool):
            raise TypeError(f"batch_stats must be True or False, got {batch_stats!r}")
        self.module, self.x, self.every, self.batch_stats = module, x, every, batch_stats
        self.q = torch.tensor([float(p) / 100 for p in q], dtype=torch.float64)
        self.steps: list[int] = []
        self._values: list[torch.Tensor] = []

    @torch.no_grad()
    def record(self, step: int, model: nn.Module) -> None:
        """Record the percentiles now (buffers and train/eval modes left as they were)."""
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
        self._values.append(torch.quantile(z.double(), self.q.to(z.device), dim=0).to(z.dtype).cpu())
        self.steps.append(step)

    def __call__(self, step: int, model: nn.Module, batch=None) -> None:
        if step % self.every == 0:
            self.record(step, model)

    @property
    def values(self) -> torch.Tensor:
        if not self._values:
            raise RuntimeError("nothing recorded yet: call the tracker (or use track_percentiles)")
        return torch.stack(self._values)


def track_percentiles(model: nn.Module, module: nn.Module, x: torch.Tensor,
                      q: Sequence[float] = (15, 50, 85), every: int = 1,
                      batch_stats: bool = False) -> PercentileTracker:
    """A :class:`PercentileTracker` that has already recorded step 0."""
    tracker = PercentileTracker(model, module, x, q=q, every=every, batch_stats=batch_stats)
    tracker.record(0, model)
    return tracker
