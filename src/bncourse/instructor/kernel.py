"""What the grader runs inside the student's kernel, around the student's code.

:func:`record` notes, before any of the student's code runs, every function, class and module that
``bncourse``, ``torch`` and ``builtins`` hold; :func:`report`, after a check, prints which of them
have been rebound since (``bn.check.bn_forward = ...``, ``setattr(torch, "allclose", ...)``, a new
``__code__``). Code in the same process can defeat this too; it raises the bar, it is no sandbox.
"""

import builtins
import json
import sys
import types

import torch

MARK = "bncourse-grader: "
IGNORED = {("builtins", "input")}  # ipykernel rebinds it for every cell
_recorded: dict[tuple[str, str], tuple[dict, object, object]] = {}


def _namespaces() -> dict[str, dict]:
    import bncourse  # noqa: F401  (every module of the package, the checks included)

    spaces = {name: vars(m) for name, m in sys.modules.items()
              if name == "bncourse" or name.startswith("bncourse.")}
    for obj in (torch, torch.nn.functional, torch.testing, torch.Tensor, torch._C.TensorBase, builtins):
        spaces[getattr(obj, "__name__", str(obj))] = vars(obj)
    return spaces


def _watched(value) -> bool:
    return callable(value) or isinstance(value, types.ModuleType | staticmethod | classmethod)


def record() -> None:
    """Note what every watched namespace holds now."""
    _recorded.clear()
    for space_name, space in _namespaces().items():
        for attr, value in list(space.items()):
            if _watched(value) and (space_name, attr) not in IGNORED:
                _recorded[space_name, attr] = (space, value, getattr(value, "__code__", None))


def rebound() -> list[str]:
    """The watched names whose value (or a function's code) changed since :func:`record`."""
    missing = object()
    return sorted(f"{space_name}.{attr}" for (space_name, attr), (space, value, code) in _recorded.items()
                  if space.get(attr, missing) is not value or getattr(value, "__code__", None) is not code)


def report(exercise: str) -> None:
    """Print, for the grader, what was rebound by the time ``exercise`` was checked."""
    print(MARK + json.dumps({"exercise": exercise, "rebound": rebound()}))
