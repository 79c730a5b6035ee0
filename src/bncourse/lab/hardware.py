"""Chapter 7's measurements: time kernels fairly, the machine's roofs, bytes and flops of batch norm.

Timings are medians of interleaved runs: the contenders alternate, so a clock that drifts or a
neighbour that wakes up hurts them alike.
"""

import platform
import re
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["TENSOR_PASSES", "copy_bandwidth", "describe", "first_call", "kernel_step", "loop_nest",
           "page_faults", "roofs", "saved_bytes", "time_interleaved"]

# How many input-sized tensors each mode must move at least: every tensor crosses memory once.
# train forward reads x and writes y; the backward reads dy and x and writes dx; eval reads x, writes y.
TENSOR_PASSES = {"train forward": 2, "backward": 3, "train fwd+bwd": 5, "eval": 2}


def describe(device: torch.device | str = "cpu") -> str:
    """One line naming what the timings ran on: the processor and its vector instructions, or the GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"device: {torch.cuda.get_device_name(device)} (CUDA)"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return (f"device: {device.type}, {name}, {torch.backends.cpu.get_cpu_capability()} vector code, "
            f"{threads} thread{'s' if threads > 1 else ''}")


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


def roofs(nbytes: int, n: int = 1024, device: torch.device | str = "cpu",
          reps: int = 25) -> tuple[float, float]:
    """The two roofs, timed interleaved: GB/s of copying ``nbytes`` (read plus write counted), and
    GFLOP/s of an ``n x n`` float32 matrix product (the friendliest arithmetic there is)."""
    src = torch.randn(max(1, nbytes // 4), device=device)
    dst = torch.empty_like(src)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds = time_interleaved({"copy": lambda: dst.copy_(src), "matmul": lambda: a @ b}, reps=reps,
                               device=device)
    return 2 * src.numel() * 4 / seconds["copy"] / 1e9, 2 * n**3 / seconds["matmul"] / 1e9


def kernel_step(kernels, inputs: dict) -> Callable[[], object]:
    """One training-mode forward and backward of a kernel module's value kernels (no autograd).

    ``kernels`` is :mod:`bncourse.functional` (readable) or :mod:`bncourse.tuned`; ``inputs`` is
    :func:`bncourse.lab.bench.make_inputs`'s dict.
    """
    x, dy, w, b = (inputs[k].detach() for k in ("x", "dy", "weight", "bias"))

    def step():
        _, cache = kernels.batch_norm_forward(x, w, b)
        return kernels.batch_norm_backward_fused(dy, cache)

    return step


def saved_bytes(fn: Callable[..., object], *args) -> int:
    """Bytes of the tensors autograd keeps for the backward of ``fn(*args)``.

    Every tensor saved for the backward passes through a hook; each storage is counted once, the
    arguments' too when they are kept (an input kept for the backward stays alive until then).
    """
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(kept.values())


def first_call(fn: Callable[[], object]) -> tuple[float, bool]:
    """Seconds of the first call of a compiled ``fn``, and whether Inductor's disk cache served it."""
    from torch._dynamo.utils import counters

    hits = counters["inductor"]["fxgraph_cache_hit"]
    misses = counters["inductor"]["fxgraph_cache_miss"]
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    cached = counters["inductor"]["fxgraph_cache_hit"] > hits
    return seconds, cached and counters["inductor"]["fxgraph_cache_miss"] == misses


def page_faults(fn: Callable[[], object], reps: int = 10) -> float:
    """Page faults per call of ``fn``: first touches of memory the operating system hands out anew.

    Counted by the process's minor-fault counter (``getrusage``); ``nan`` where there is none (Windows).
    """
    try:
        import resource
    except ImportError:
        return float("nan")
    fn()  # a first call may set up what later calls reuse
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(reps):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / reps


def loop_nest(code: str) -> list[str]:
    """The ``for`` loops of Inductor's C++ code, as short Python-like lines indented by nesting.

    A loop is nested in another when it opens before that one's braces close. Triton code (a GPU's)
    has no such loops: the list is empty.
    """
    loops, open_at, depth = [], [], 0  # open_at: the brace depth at which each open loop began
    for line in code.splitlines():
        m = re.match(r"\s*for\s*\(int64_t (\w+)=.*?\((-?\d+)L?\);.*?<.*?\((\d+)L?\);.*?\+=.*?\((\d+)L?\)\)",
                     line)
        if m:
            while open_at and open_at[-1] >= depth:
                open_at.pop()
            var, start, stop, step = m.groups()
            loops.append("    " * len(open_at) + f"for {var} in range({start}, {stop}, {step})")
            open_at.append(depth)
        depth += line.count("{") - line.count("}")
    return loops
