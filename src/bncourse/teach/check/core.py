"""What every exercise check shares: the failure type, the one-line pass message, and calling the
learner's function, which also enforces "write your own" where an exercise asks for it."""

import functools
import importlib
import math
import numbers
import os
import re
import sys
import types
from collections.abc import Callable
from contextlib import contextmanager

import torch

from ...lab.device import generator


class CheckFailed(AssertionError):
    """The learner's answer is wrong; the message says how."""


# What an exercise asks the learner to write without, by check name: the batch-norm kernels where the
# exercise is to write batch norm's arithmetic, and what the exercise's text excludes. While the
# learner's function runs inside its check, calling any of these (a module, a function, or a C
# function of torch, by name) raises "write your own", even through a name imported earlier or
# inside a try/except.
TORCH_BATCH_NORM = ("torch.nn.functional.batch_norm", "torch.nn.modules.batchnorm",
                    *(f"torch.{n}" for n in dir(torch) if "batch_norm" in n))
KERNELS = (*TORCH_BATCH_NORM, "bncourse.kernels", "bncourse.functional", "bncourse.tuned", "bncourse.layers",
           "bncourse.nn", "bncourse.autograd")
AUTOGRAD = ("torch.autograd.grad", "torch.autograd.backward")
SAMPLING = ("torch.randn", "torch.randn_like", "torch.normal", "torch.rand", "random")  # a formula
WRITE_YOUR_OWN = {
    "largest_stable_lr": ("bncourse.lab.landscape",),
    "standardize": ("bncourse.lab.scaling",),
    "identity_gap": SAMPLING,
    "gradient_kept": SAMPLING + KERNELS + AUTOGRAD,
    "hand_written_layer": KERNELS,
    "bn_forward": KERNELS,
    "bias_shift": KERNELS,
    "bn_backward": KERNELS + AUTOGRAD,
    "numeric_gradient": ("bncourse.lab.testing",),
    "group_norm": KERNELS + ("torch.nn.functional.group_norm", "torch.group_norm",
                             "torch.nn.modules.normalization"),
    "batch_norm_function": KERNELS,
    "my_batch_norm": KERNELS,
    "bn_backward_spatial": KERNELS + AUTOGRAD,
    "layer_norm_backward": KERNELS + AUTOGRAD + ("torch.nn.functional.layer_norm", "torch.layer_norm",
                                                 "torch.native_layer_norm", "torch.nn.modules.normalization"),
    "fold_bn": ("bncourse.fold", "torch.nn.utils.fusion"),
}


def language() -> str:
    """The language the checks speak to the learner: ``BNCOURSE_LANG`` (``en``, the default, or ``zh``)."""
    value = os.environ.get("BNCOURSE_LANG", "en").strip().lower() or "en"
    if value.split("_")[0].split("-")[0] not in ("en", "zh"):
        raise ValueError(f"BNCOURSE_LANG must be 'en' or 'zh', got {value!r}")
    return value.split("_")[0].split("-")[0]


def say(en: str, zh: str) -> str:
    """The message in the learner's language (:func:`language`)."""
    return zh if language() == "zh" else en


_WIDE = "\u3000-\u9fff\uff00-\uffef"  # CJK characters and full-width punctuation: two columns each
_CHUNK = re.compile(f"[{_WIDE}]|[^\\s{_WIDE}]+|\\s+")


def columns(text: str) -> int:
    """The columns ``text`` takes in a monospaced block: a Chinese character takes two."""
    return sum(2 if re.match(f"[{_WIDE}]", c) else 1 for c in text)


def fill(text: str, width: int = 88, indent: str = "  ") -> str:
    """``text`` wrapped to ``width`` columns, breaking at spaces and between Chinese characters;
    its own line breaks are kept."""
    out = []
    for paragraph in text.split("\n"):
        line = ""
        for chunk in _CHUNK.findall(paragraph):
            chunk = " " if chunk.isspace() else chunk
            if columns(line + chunk.rstrip()) > width and line.strip():
                out.append(line.rstrip())
                line = indent
                if chunk == " ":
                    continue
            line += chunk
        out.append(line.rstrip())
    return "\n".join(out)


def passed(name: str, detail: str = "") -> None:
    """Print the pass message of check ``name``, wrapped to the book's 88 columns."""
    text = say(en=f"✔ {name}: correct", zh=f"✔ {name}：正确")
    if detail:
        text += say(en=f" ({detail})", zh=f"（{detail}）")
    print(fill(text))


def call(fn: Callable, *args, name: str):
    """Call the learner's function for check ``name``.

    ``NotImplementedError`` becomes a clear "not attempted" failure, and what ``WRITE_YOUR_OWN``
    lists for the check raises a "write your own" failure.
    """
    with _write_your_own(name):
        try:
            return fn(*args)
        except NotImplementedError as e:
            raise CheckFailed(say(en=f"{name}: not attempted yet (the function raises NotImplementedError)",
                                  zh=f"{name}：尚未作答（函数抛出 NotImplementedError）")) from e


def run(fn: Callable, *args, name: str, what: str):
    """``call``, with any other error of the learner's code turned into a failure that says where."""
    try:
        return call(fn, *args, name=name)
    except CheckFailed:
        raise
    except Exception as e:
        raise CheckFailed(say(en=f"{name}: the function raised {type(e).__name__}: {e} ({what})",
                              zh=f"{name}：函数抛出了 {type(e).__name__}：{e}（{what}）")) from e


def channel_data(shape, seed: int, offset: float, channel_dim: int = 1) -> torch.Tensor:
    """A float64 input with per-channel scales from 0.01 (variance below the usual eps) to 10 and
    per-channel offsets of about ``offset``."""
    g = generator(seed)
    c = shape[channel_dim]
    view = [1] * len(shape)
    view[channel_dim] = c
    scale = torch.logspace(-2, 1, c, dtype=torch.float64)[torch.randperm(c, generator=g)]
    shift = torch.randn(c, generator=g, dtype=torch.float64) * offset
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    return x * scale.reshape(view) + shift.reshape(view)


def affine_params(c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(gamma, beta)``: gamma in [0.5, 2], beta standard normal."""
    g = generator(seed + 1000)
    return (torch.rand(c, generator=g, dtype=torch.float64) * 1.5 + 0.5,
            torch.randn(c, generator=g, dtype=torch.float64))


def as_tensor(value, name: str, like: torch.Tensor) -> torch.Tensor:
    """The learner's result as a tensor shaped like ``like``, or a failure naming the mismatch."""
    if value is None:
        raise CheckFailed(say(en=f"{name}: the function returned None; did you forget `return`?",
                              zh=f"{name}：函数返回了 None；是不是忘了 `return`？"))
    t = torch.as_tensor(value)
    if t.shape != like.shape:
        raise CheckFailed(say(
            en=f"{name}: expected a result of shape {tuple(like.shape)}, got {tuple(t.shape)}",
            zh=f"{name}：结果的形状应为 {tuple(like.shape)}，得到的是 {tuple(t.shape)}"))
    return t.to(like.dtype)


_CHECKS = os.path.dirname(__file__) + os.sep


@functools.cache
def _forbidden(names: tuple[str, ...]) -> tuple[dict, dict, dict]:
    """``names`` sorted into source files (modules; a package is its folder), Python code objects
    and C function names."""
    files, codes, builtins = {}, {}, {}
    for name in names:
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError:
            module, attr = name.rsplit(".", 1)
            obj = getattr(importlib.import_module(module), attr)
        if isinstance(obj, types.ModuleType):
            path = obj.__file__
            if os.path.basename(path) == "__init__.py":
                path = os.path.dirname(path) + os.sep
            files[path] = name
        elif isinstance(obj, types.FunctionType):
            codes[obj.__code__] = name
        else:
            builtins[obj.__name__] = name
    return files, codes, builtins


def _used(names: tuple[str, ...], frame, event: str, arg) -> str | None:
    """What of ``names`` a profiler event calls, or None."""
    files, codes, builtins = _forbidden(names)
    if event == "c_call":
        return f"torch.{arg.__name__}" if getattr(arg, "__name__", None) in builtins else None
    if event != "call":
        return None
    code = frame.f_code
    path = code.co_filename
    if path.startswith(_CHECKS):  # the checks themselves, and what they hand the learner's function
        return None
    if code in codes or path in files or any(p.endswith(os.sep) and path.startswith(p) for p in files):
        return f"{frame.f_globals.get('__name__', '?')}.{getattr(code, 'co_qualname', code.co_name)}"
    return None


@contextmanager
def _write_your_own(name: str):
    """While the block runs, a call to what ``WRITE_YOUR_OWN[name]`` lists raises CheckFailed; the
    block fails even if the learner's code catches that error."""
    names = WRITE_YOUR_OWN.get(name)
    if not names:
        yield
        return
    used = []

    def failure() -> CheckFailed:
        return CheckFailed(say(
            en=f"{name}: write your own: your function calls {used[0]}, which this exercise asks you to "
               "do without",
            zh=f"{name}：请自己动手写：你的函数调用了 {used[0]}，而这个练习要求不用它"))

    def profile(frame, event, arg):
        what = _used(names, frame, event, arg)
        if what is not None:
            used.append(what)
            raise failure()

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield
    except Exception:
        if used:
            raise failure() from None
        raise
    finally:
        sys.setprofile(previous)
    if used:
        raise failure()


def prediction(name: str, guess, measured: float, *, low: float, high: float, explain: str,
               fmt: str = ".3g") -> None:
    """Check a *predict* exercise: the learner committed to ``guess`` before the cell that measured
    ``measured``. It passes for any honest prediction, a number in the plausible range
    ``[low, high]``, and prints how far it was from the run and ``explain``, why the run came out
    where it did (in the learner's language: build it with :func:`say`). It fails only for a
    prediction not made (the stub, None, not a number, NaN)."""
    if guess is None or isinstance(guess, bool) or not isinstance(guess, numbers.Real) \
            or math.isnan(guess):
        raise CheckFailed(say(
            en=f"{name}: expected your prediction as a number, got {guess!r}; commit to one before you "
               "run the measurement",
            zh=f"{name}：你的预测应是一个数，得到的是 {guess!r}；请在运行测量之前先给出预测"))
    if not low <= guess <= high:
        raise CheckFailed(say(
            en=f"{name}: your prediction {guess:{fmt}} is outside [{low:{fmt}}, {high:{fmt}}], the range "
               "this quantity can take here; reread the setup",
            zh=f"{name}：你的预测 {guess:{fmt}} 不在 [{low:{fmt}}, {high:{fmt}}] 内，而这个量在这里只能取"
               "这个范围内的值；请重读实验设置"))
    gap = guess - measured
    close = math.isclose(guess, measured, rel_tol=0.1, abs_tol=1e-12)
    how = say(en="spot on" if close else f"{'above' if gap > 0 else 'below'} the run by {abs(gap):{fmt}}",
              zh="正中" if close else f"比实测{'高' if gap > 0 else '低'} {abs(gap):{fmt}}")
    passed(name, say(en=f"you predicted {guess:{fmt}}, the run measured {measured:{fmt}}: {how}. {explain}",
                     zh=f"你预测 {guess:{fmt}}，实测为 {measured:{fmt}}：{how}。{explain}"))
