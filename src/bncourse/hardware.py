"""Chapter 7's measurements: time kernels fairly, the machine's roofs, bytes and flops of batch norm.

Timings are medians of interleaved runs: the contenders alternate, so a clock that drifts or a
neighbour that wakes up hurts them alike.
"""

import re
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["TENSOR_PASSES", "copy_bandwidth", "kernel_step", "matmul_flops", "saved_bytes",
           "time_interleaved"]

# How many input-sized tensors each mode must move at least: every tensor crosses memory once.
# train forward reads x and writes y; the backward reads dy and x and writes dx; eval reads x, writes y.
TENSOR_PASSES = {"train forward": 2, "backward": 3, "train fwd+bwd": 5, "eval": 2}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], object]], reps: int = 20, warmup: int = 3,
                     device: torch.device | str = "cpu") -> dict[str, float]:
    """Median seconds of each function, the functions called in turn ``warmup + reps`` times."""
    device = torch.device(device)
    times = {name: [] for name in fns}
    for i in range(warmup + reps):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def copy_bandwidth(nbytes: int, device: torch.device | str = "cpu", reps: int = 20) -> float:
    """The roof: GB/s of copying a tensor of ``nbytes`` into another (read plus write counted)."""
    src = torch.randn(max(1, nbytes // 4), device=device)
    dst = torch.empty_like(src)
    seconds = time_interleaved({"copy": lambda: dst.copy_(src)}, reps=reps, device=device)["copy"]
    return 2 * src.numel() * 4 / seconds / 1e9


def matmul_flops(n: int = 1024, device: torch.device | str = "cpu", reps: int = 10) -> float:
    """The compute roof, roughly: GFLOP/s of an ``n x n`` float32 matrix product."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds = time_interleaved({"mm": lambda: a @ b}, reps=reps, device=device)["mm"]
    return 2 * n**3 / seconds / 1e9


def kernel_step(kernels, inputs: dict) -> Callable[[], object]:
    """One training-mode forward and backward of a kernel module's value kernels (no autograd).

    ``kernels`` is :mod:`bncourse.functional` (readable) or :mod:`bncourse.tuned`; ``inputs`` is
    :func:`bncourse.bench.make_inputs`'s dict.
    """
    x, dy, w, b = (inputs[k].detach() for k in ("x", "dy", "weight", "bias"))

    def step():
        _, cache = kernels.batch_norm_forward(x, w, b)
        return kernels.batch_norm_backward_fused(dy, cache)

    return step


def saved_bytes(fn: Callable[..., object], *args) -> int:
    """Bytes autograd keeps for the backward of ``fn(*args)``, beyond the arguments themselves.

    Every tensor saved for the backward passes through a hook; each storage is counted once, and the
    storages of ``args`` (which exist anyway) not at all.
    """
    given = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(n for ptr, n in kept.items() if ptr not in given)


def loop_nest(code: str) -> list[str]:
    """The ``for`` loops of Inductor's C++ code, as short Python-like lines indented by depth."""
    loops = []
    for line in code.splitlines():
        m = re.match(r"(\s*)for\s*\(int64_t (\w+)=.*?\((-?\d+)L?\);.*?<.*?\((\d+)L?\);.*?\+=.*?\((\d+)L?\)\)",
                     line)
        if m:
            indent, var, start, stop, step = m.groups()
            loops.append((len(indent), f"for {var} in range({start}, {stop}, {step})"))
    levels = sorted({depth for depth, _ in loops})
    return ["    " * levels.index(depth) + loop for depth, loop in loops]
