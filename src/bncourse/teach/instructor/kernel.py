"""What the grader runs inside the student's kernel, around the student's code.

:func:`record` notes, before any of the student's code runs, every function, class and module that
``bncourse``, ``torch``, ``torch.Tensor`` and ``builtins`` hold; :func:`report`, after a check,
prints which of them have been rebound since (``bn.check.bn_forward = ...``, ``setattr(torch,
"allclose", ...)``, a method set on ``torch.Tensor``, a new ``__code__``). Code in the same process
can defeat this too: it raises the bar, it is no sandbox.
"""

import builtins
import inspect
import json
import sys
import types

import torch

MARK = "bncourse-grader: "
# Rebound by others: ipykernel, for every cell; torch._dynamo, once imported (as torch.func does).
IGNORED = {("builtins", "input"), ("torch", "manual_seed")}
_MISSING = object()
_recorded: dict[tuple[str, str], tuple[object, object, object]] = {}


def _namespaces() -> dict[str, object]:
    import bncourse  # noqa: F401  (every module of the package, the checks included)

    spaces = {name: m for name, m in sys.modules.items() if name.split(".")[0] == "bncourse"}
    for space in (torch, torch.nn.functional, torch.testing, builtins):
        spaces[space.__name__] = space
    spaces["torch.Tensor"] = torch.Tensor  # its methods, inherited ones included
    return spaces


def _watched(value) -> bool:
    return callable(value) or isinstance(value, types.ModuleType | staticmethod | classmethod)


def record() -> None:
    """Note what every watched name holds now."""
    _recorded.clear()
    for space_name, space in _namespaces().items():
        for attr in dir(space):
            value = inspect.getattr_static(space, attr, _MISSING)
            if _watched(value) and (space_name, attr) not in IGNORED:
                _recorded[space_name, attr] = (space, value, getattr(value, "__code__", None))


def rebound() -> list[str]:
    """The watched names whose value (or a function's code) changed since :func:`record`."""
    return sorted(f"{space_name}.{attr}" for (space_name, attr), (space, value, code) in _recorded.items()
                  if inspect.getattr_static(space, attr, _MISSING) is not value
                  or getattr(value, "__code__", None) is not code)


def report(exercise: str) -> None:
    """Print, for the grader, what was rebound by the time ``exercise`` was checked."""
    print(MARK + json.dumps({"exercise": exercise, "rebound": rebound()}))
