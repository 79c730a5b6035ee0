"""What every exercise check shares: the failure type and the one-line pass message."""

from collections.abc import Callable

import torch


class CheckFailed(AssertionError):
    """The learner's answer is wrong; the message says how."""


def passed(name: str, detail: str = "") -> None:
    """Print the one-line pass message of check ``name``."""
    print(f"✔ {name}: correct" + (f" ({detail})" if detail else ""))


def call(fn: Callable, *args, name: str):
    """Call the learner's function, turning ``NotImplementedError`` into a clear failure."""
    try:
        return fn(*args)
    except NotImplementedError as e:
        raise CheckFailed(f"{name}: not attempted yet (the function raises NotImplementedError)") from e


def as_tensor(value, name: str, like: torch.Tensor) -> torch.Tensor:
    """The learner's result as a tensor shaped like ``like``, or a failure naming the mismatch."""
    if value is None:
        raise CheckFailed(f"{name}: the function returned None; did you forget `return`?")
    t = torch.as_tensor(value)
    if t.shape != like.shape:
        raise CheckFailed(
            f"{name}: expected a result of shape {tuple(like.shape)}, got {tuple(t.shape)}"
        )
    return t.to(like.dtype)
