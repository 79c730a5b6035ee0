"""The course's one training loop: S members (seeds, learning rates) trained at once.

Every chapter's training goes through :func:`train`. It takes a plain ``nn.Module`` (or a function
that builds one), makes one member per seed, and trains all of them as one wide network
(:class:`bncourse.lab.stack.Stack`): one forward and one backward per step for all members. Each
member is exactly the network a single run with its seed would train, up to float rounding (the
tests hold it to that): its own initialization, its own order of mini-batches, its own learning
rate, its own batch statistics and running averages.

The optimizer is plain SGD, as in the paper's MNIST experiment, with PyTorch's weight decay
(``g + wd * w``) on every parameter or on those ``decay`` picks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..layers import bn_layers
from .data import Split
from .device import generator, shifted
from .stack import Stack

__all__ = ["ProbeBatches", "Runs", "built", "each", "evaluate", "train"]


@dataclass
class Runs:
    """What :func:`train` recorded for its S members (row ``i`` of every table is member ``i``).

    ``step_loss`` (S, steps): the training loss of every step (NaN once a member diverged).
    ``eval_step``: the steps at which the members were evaluated, in eval mode, on the whole
    training and test sets: ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``, each (S, E).
    ``models``: the trained members, plain ``nn.Module`` s.
    """

    models: list[nn.Module]
    seeds: list[int]
    lrs: list[float]
    step_loss: torch.Tensor
    eval_step: list[int] = field(default_factory=list)
    train_loss: torch.Tensor | None = None
    train_acc: torch.Tensor | None = None
    test_loss: torch.Tensor | None = None
    test_acc: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.models)

    @property
    def diverged(self) -> torch.Tensor:
        """(S,) bool: whether the member's loss became NaN or infinite."""
        return ~torch.isfinite(self.step_loss).all(1)

    def steps_to(self, accuracy: float) -> list[int | None]:
        """Per member, the first evaluated step whose test accuracy reached ``accuracy`` (or None)."""
        out = []
        for row in self.test_acc:
            hit = (row >= accuracy).nonzero()
            out.append(self.eval_step[hit[0].item()] if len(hit) else None)
        return out


class ProbeBatches:
    """For ``on_step`` probes: a fresh random batch of ``(x, y)`` every ``every`` steps."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, every: int, batch_size: int, seed: int):
        if every < 1 or not 1 < batch_size <= len(x):
            raise ValueError(f"expected every >= 1 and 1 < batch_size <= {len(x)}, got "
                             f"every={every}, batch_size={batch_size}")
        self.x, self.y, self.every, self.batch_size = x, y, every, batch_size
        self._gen = generator(seed)

    def at(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The batch for ``step``, or None between probes."""
        if step % self.every:
            return None
        idx = torch.randperm(len(self.x), generator=self._gen)[: self.batch_size].to(self.x.device)
        return self.x[idx], self.y[idx]


def each(probes: Sequence[Callable]) -> Callable:
    """An ``on_step`` for :func:`train` that calls ``probes[i](step, member_i, (x_i, y_i))``, member
    ``i``'s batch of that step last: one single-model probe per member."""
    probes = list(probes)

    def on_step(step: int, models: list[nn.Module], batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        if len(models) != len(probes):
            raise ValueError(f"expected one probe per member, got {len(probes)} for {len(models)}")
        for i, (probe, model) in enumerate(zip(probes, models, strict=True)):
            probe(step, model, (batch[0][i], batch[1][i]))

    return on_step


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of one ``model`` on ``(x, y)``, in eval mode."""
    was_training = model.training
    model.eval()
    logits = model(x)
    model.train(was_training)
    loss = nn.functional.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return loss, acc


def built(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    """What ``make()`` builds after ``bn.seed_everything(seed)``; the global random state is left
    as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(shifted(seed))
        return make()


def _members(models, seeds: list[int]) -> list[nn.Module]:
    if isinstance(models, nn.Module):
        raise TypeError("expected a function that builds the model (one member per seed) or a list of "
                        "models, got one nn.Module: pass `lambda: model` to train copies of it")
    if callable(models):
        return [built(models, seed) for seed in seeds]
    members = list(models)
    if len(members) != len(seeds):
        raise ValueError(f"expected one seed per model, got {len(members)} models and {len(seeds)} seeds")
    return members


def _stacked_data(data: Split | Sequence[Split], size: int) -> tuple[Split, bool]:
    """The data as one Split; ``True`` when every member has its own (tensors stacked on dim 0)."""
    if isinstance(data, Split):
        return data, False
    splits = list(data)
    if len(splits) != size:
        raise ValueError(f"expected one Split per member ({size}), got {len(splits)}")
    try:
        return Split(*(torch.stack(ts) for ts in zip(*(
            (s.x_train, s.y_train, s.x_test, s.y_test) for s in splits), strict=True))), True
    except RuntimeError as e:
        raise ValueError(f"expected Splits of equal sizes, one per member: {e}") from None


class _Batches:
    """Each member's mini-batches, reshuffled every epoch from its own seed, the last short batch
    dropped: the order a one-member run with that seed sees."""

    def __init__(self, n: int, batch_size: int, seeds: list[int], device):
        if not isinstance(batch_size, int) or not 2 <= batch_size <= n:
            raise ValueError(f"batch_size must be an int in [2, {n}], got {batch_size!r}")
        self.n, self.batch_size, self.device = n, batch_size, device
        self.gens = [generator(s) for s in seeds]
        self.per_epoch = n // batch_size
        self.order, self.i = None, self.per_epoch

    def next(self) -> torch.Tensor:
        if self.i == self.per_epoch:
            self.order = torch.stack([torch.randperm(self.n, generator=g) for g in self.gens]).to(self.device)
            self.i = 0
        idx = self.order[:, self.i * self.batch_size:(self.i + 1) * self.batch_size]
        self.i += 1
        return idx


def _gather(t: torch.Tensor, idx: torch.Tensor, own: bool) -> torch.Tensor:
    """Rows ``idx`` (S, B) of ``t``, shared (N, ...) or one per member (S, N, ...): (S, B, ...)."""
    if own:
        return t[torch.arange(len(idx), device=idx.device)[:, None], idx]
    return t[idx]


def _losses(stack: Stack, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per member, mean cross-entropy and the logits, on inputs (S, B, ...) and labels (S, B)."""
    logits = stack(x)  # (S, B, K)
    s, b, k = logits.shape
    loss = nn.functional.cross_entropy(logits.reshape(s * b, k), y.reshape(s * b), reduction="none")
    return loss.view(s, b).mean(1), logits


@torch.no_grad()
def _evaluate(stack: Stack, x: torch.Tensor, y: torch.Tensor, own: bool) -> tuple[torch.Tensor, ...]:
    """Per member (S,), loss and accuracy on the whole of ``(x, y)`` in eval mode."""
    modes = [m.training for m in stack.wide.modules()]
    stack.wide.eval()
    if not own:
        x, y = x.expand(stack.size, *x.shape), y.expand(stack.size, *y.shape)
    loss, logits = _losses(stack, x, y)
    for m, mode in zip(stack.wide.modules(), modes, strict=True):
        m.training = mode
    return loss, (logits.argmax(-1) == y).float().mean(1)


def train(
    models: Callable[[], nn.Module] | Sequence[nn.Module],
    data: Split | Sequence[Split],
    steps: int,
    lr: float | Sequence[float],
    *,
    seeds: Sequence[int] = (0,),
    batch_size: int = 64,
    eval_every: int | None = None,
    weight_decay: float = 0.0,
    decay: Callable[[nn.Module], Sequence[nn.Parameter]] | None = None,
    bn_eval: bool = False,
    on_step: Callable[[int, list[nn.Module], tuple[torch.Tensor, torch.Tensor]], None] | None = None,
    progress: bool = True,
    eval_train: bool = True,
) -> Runs:
    """Train one member per seed, all at once, with cross-entropy and plain SGD; returns :class:`Runs`.

    ``models``: a function that builds the network (member ``i`` is what it builds after
    ``bn.seed_everything(seeds[i])``), or the members themselves (trained in place).
    ``data``: one :class:`~bncourse.lab.data.Split` for all, or one per member (equal sizes), on the
    device the members are on. ``lr``: one rate, or one per member.
    ``seeds`` also order each member's mini-batches (reshuffled every epoch, a short last batch
    dropped). ``eval_every``: evaluate every so many steps (and at steps 0 and ``steps``; None: only
    those two). ``weight_decay`` adds ``weight_decay * w`` to the gradient of every trainable
    parameter, or of those ``decay(model)`` returns. ``bn_eval=True`` holds every batch norm layer in
    eval mode (running statistics, no updates) while the rest trains. ``on_step(step, models, batch)``
    runs after every step, with the members (each parameter's ``.grad`` is the gradient that step
    used) and their batches ``(x, y)``, shapes (S, B, ...) and (S, B); :func:`each` turns one probe
    per member into one ``on_step``.
    A member whose loss becomes NaN carries on with NaN weights; the others are unaffected.
    ``eval_train=False`` evaluates on the test set only (``train_loss`` and ``train_acc`` are then
    NaN): in a sweep evaluated often, the whole training set costs more than the training.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("expected at least one seed (one member per seed)")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    lrs = [float(v) for v in lr] if isinstance(lr, Sequence) else [float(lr)] * len(seeds)
    if len(lrs) != len(seeds):
        raise ValueError(f"expected one learning rate or one per seed, got {len(lrs)} for {len(seeds)} seeds")
    if any(not v > 0 for v in lrs) or weight_decay < 0:
        raise ValueError(f"expected learning rates > 0 and weight_decay >= 0, got {lrs} and {weight_decay}")
    if eval_every is not None and (not isinstance(eval_every, int) or eval_every < 1):
        raise ValueError(f"eval_every must be a positive int or None, got {eval_every!r}")
    members = _members(models, seeds)
    data, own = _stacked_data(data, len(members))
    x, y = data.x_train, data.y_train
    device = x.device
    size = len(members)

    for m in members:
        m.train()
        for layer in bn_layers(m) if bn_eval else []:
            layer.eval()
    stack = Stack(members)
    stack.check(x[:, :8] if own else x[:8].expand(size, *x[:8].shape))
    names = [n for n, p in members[0].named_parameters() if p.requires_grad]
    wide = dict(stack.wide.named_parameters())
    params = [wide[n] for n in names]
    decayed = {n for n, p in members[0].named_parameters()
               if id(p) in {id(q) for q in (decay(members[0]) if decay else members[0].parameters())}}
    rate = torch.tensor(lrs, dtype=x.dtype, device=device)[:, None]
    batches = _Batches(x.shape[1] if own else x.shape[0], batch_size, seeds, device)

    runs = Runs(members, seeds, lrs, torch.full((size, steps), float("nan"), dtype=torch.float64))
    evals: list[tuple[torch.Tensor, ...]] = []

    skipped = (torch.full((size,), float("nan")),) * 2

    def record(step: int) -> None:
        runs.eval_step.append(step)
        on_train = _evaluate(stack, x, y, own) if eval_train else skipped
        evals.append((*on_train, *_evaluate(stack, data.x_test, data.y_test, own)))

    record(0)
    bar = tqdm(range(1, steps + 1), disable=not progress, desc="training", leave=False)
    for step in bar:
        idx = batches.next()
        xb, yb = _gather(x, idx, own), _gather(y, idx, own)
        loss, _ = _losses(stack, xb, yb)
        grads = torch.autograd.grad(loss.sum(), params)
        with torch.no_grad():
            for name, p, g in zip(names, params, grads, strict=True):
                d = g + weight_decay * p if weight_decay and name in decayed else g
                p.view(size, -1).sub_(rate * d.reshape(size, -1))
        runs.step_loss[:, step - 1] = loss.detach().double()
        if on_step is not None:
            _expose_grads(stack, names, grads)
            on_step(step, members, (xb, yb))
        if step == steps or eval_every and step % eval_every == 0:
            record(step)
    bar.close()
    stack.release()
    if on_step is not None:
        for m in members:
            m.zero_grad(set_to_none=True)
    runs.train_loss, runs.train_acc, runs.test_loss, runs.test_acc = (
        torch.stack([c.cpu() for c in col], 1).double() for col in zip(*evals, strict=True))
    return runs


def _expose_grads(stack: Stack, names: list[str], grads) -> None:
    """Each member's ``.grad``: a view of its part of the step's gradient."""
    for i, member in enumerate(stack.members):
        own = dict(member.named_parameters())
        for name, g in zip(names, grads, strict=True):
            p = own[name]
            p.grad = g.reshape(stack.size, *p.shape)[i]
