"""A small training loop with a progress bar and a recorded history."""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from .data import Split, batches


@dataclass
class History:
    """What a run recorded: the loss of every step, and evaluations every ``eval_every`` steps."""

    step_loss: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)

    @property
    def diverged(self) -> bool:
        """Whether the loss became NaN or infinite."""
        return any(not torch.isfinite(torch.tensor(v)) for v in self.step_loss)

    def steps_to(self, accuracy: float) -> int | None:
        """First evaluated step whose test accuracy reached ``accuracy`` (None if never)."""
        for step, acc in zip(self.eval_step, self.test_acc, strict=True):
            if acc >= accuracy:
                return step
        return None


class ProbeBatches:
    """For ``on_step`` probes: a fresh random batch of ``(x, y)`` every ``every`` steps."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, every: int, batch_size: int, seed: int):
        if every < 1 or not 1 < batch_size <= len(x):
            raise ValueError(f"expected every >= 1 and 1 < batch_size <= {len(x)}, got "
                             f"every={every}, batch_size={batch_size}")
        self.x, self.y, self.every, self.batch_size = x, y, every, batch_size
        self._gen = torch.Generator().manual_seed(seed)

    def at(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The batch for ``step``, or None between probes."""
        if step % self.every:
            return None
        idx = torch.randperm(len(self.x), generator=self._gen)[: self.batch_size].to(self.x.device)
        return self.x[idx], self.y[idx]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``, in eval mode."""
    was_training = model.training
    model.eval()
    logits = model(x)
    model.train(was_training)
    loss = nn.functional.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return loss, acc


def train(
    model: nn.Module,
    data: Split,
    steps: int,
    lr: float,
    batch_size: int = 64,
    optimizer: str = "sgd",
    eval_every: int = 50,
    seed: int = 0,
    progress: bool = True,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> History:
    """Train a classifier with cross-entropy for ``steps`` mini-batch steps; returns its History.

    ``optimizer`` is ``"sgd"`` (plain SGD, as in the paper's MNIST experiment) or ``"adam"``.
    The data must be on the model's device. A run whose loss becomes NaN stops early.
    """
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    gen = torch.Generator().manual_seed(seed)
    history = History()

    def record(step: int) -> None:
        history.eval_step.append(step)
        loss, acc = evaluate(model, data.x_train, data.y_train)
        history.train_loss.append(loss)
        history.train_acc.append(acc)
        history.test_acc.append(evaluate(model, data.x_test, data.y_test)[1])

    model.train()
    record(0)
    step = 0
    bar = tqdm(total=steps, disable=not progress, desc="training", leave=False)
    while step < steps:
        for xb, yb in batches(data.x_train, data.y_train, batch_size, gen):
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            history.step_loss.append(loss.item())
            bar.update(1)
            if on_step is not None:
                on_step(step, model)
            if not torch.isfinite(loss):
                bar.close()
                record(step)
                return history
            if step % eval_every == 0 or step == steps:
                record(step)
            if step == steps:
                break
    bar.close()
    return history
