"""Chapter 7's measurements: time kernels fairly, the machine's roofs, bytes and flops of batch norm.

Timings are medians of interleaved runs: the contenders alternate, so a clock that drifts or a
neighbour that wakes up hurts them alike.

The roof is a bound, measured beside the kernels it bounds. Reading memory and writing it cost
differently (a write first fetches the line it writes into, unless the processor streams it out),
so three streams over a tensor the size of the input are timed with the kernels, interleaved:
a read (``x.sum()``, ``x.amax()``), a write (``fill_``, ``zero_``) and a copy (a read and a write
per value). Each stream's *best* repetition counts: the roof is the most the machine did. A kernel
that must read ``R`` and write ``W`` input-sized tensors (:data:`MIXES`) is bounded by
:meth:`Roof.seconds`: reads paired with writes at the copy's rate (or the two streams one after the
other, if that is faster), the reads or writes left over at their own rate. Kernels are timed by
their median, so a kernel shows above 100% of its bound only if it moved its bytes faster than the
fastest stream of the same kind did.
"""

import ctypes
import math
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .. import kernels as readable_kernels

__all__ = ["MIXES", "TENSOR_PASSES", "Roof", "Timing", "describe", "first_call", "loop_nest",
           "page_faults", "readable_batch_norm", "reuse_freed_memory", "saved_bytes", "stream_fns",
           "time_interleaved", "time_samples", "time_with_roof"]

# How many input-sized tensors each mode must read and write at least (every tensor crosses memory
# once): the train forward reads x and writes y; the backward reads dy and x and writes dx; eval reads
# x and writes y.
MIXES = {"train forward": (1, 1), "backward": (2, 1), "train fwd+bwd": (3, 2), "eval": (1, 1)}
TENSOR_PASSES = {mode: reads + writes for mode, (reads, writes) in MIXES.items()}
# The streams the roof is measured with: the fastest of each kind counts.
STREAMS = {"read": ("sum", "amax"), "write": ("fill", "zero"), "copy": ("copy",)}


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


def time_samples(fns: dict[str, Callable[[], object]], reps: int = 20, warmup: int = 3,
                 device: torch.device | str = "cpu", settle: int = 0) -> dict[str, list[float]]:
    """Seconds of every timed call of each function, the functions called in turn ``warmup + reps``
    times (the first ``warmup`` rounds are not kept).

    With ``settle=k``, each timed call follows ``k`` untimed calls of the same function: it finds the
    caches as that function leaves them, not holding the previous function's data and its dirty lines
    to write back (as a loop repeating one call, ``torch.utils.benchmark``'s, times it).
    """
    device = torch.device(device)
    times = {name: [] for name in fns}
    for i in range(warmup + reps):
        for name, fn in fns.items():
            for _ in range(settle):
                fn()
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def time_interleaved(fns: dict[str, Callable[[], object]], reps: int = 20, warmup: int = 3,
                     device: torch.device | str = "cpu") -> dict[str, float]:
    """Median seconds of each function, the functions called in turn ``warmup + reps`` times."""
    samples = time_samples(fns, reps, warmup, device)
    return {name: statistics.median(ts) for name, ts in samples.items()}


def stream_fns(x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The roof's streams over ``x``'s bytes: two reads, two writes (into a tensor of x's size that
    exists already) and a copy. Named ``"<kind>: <how>"``, kind one of read, write, copy."""
    src = x.detach().reshape(-1)
    dst = torch.empty_like(src)
    return {"read: sum": src.sum, "read: amax": src.amax, "write: fill": lambda: dst.fill_(1.0),
            "write: zero": dst.zero_, "copy": lambda: dst.copy_(src)}


@dataclass
class Roof:
    """The memory roof for tensors of ``nbytes``: the repetitions of each stream of :func:`stream_fns`.

    ``samples`` maps each stream's name to its seconds per repetition, timed interleaved with the
    kernels the roof bounds.
    """

    nbytes: int
    samples: dict[str, list[float]]

    def _stream(self, kind: str) -> list[float]:
        """The repetitions of the fastest stream of ``kind`` (read, write or copy)."""
        if kind not in STREAMS:
            raise ValueError(f"expected a stream kind, one of {', '.join(STREAMS)}, got {kind!r}")
        streams = [ts for name, ts in self.samples.items() if name.split(":")[0] == kind]
        return min(streams, key=min)

    def _bytes(self, kind: str) -> int:
        return 2 * self.nbytes if kind == "copy" else self.nbytes  # a copy reads and writes

    def gbps(self, kind: str) -> float:
        """GB/s of the best repetition of the fastest stream of ``kind`` (a copy counts both ways)."""
        return self._bytes(kind) / min(self._stream(kind)) / 1e9

    def spread(self, kind: str) -> tuple[float, float, float]:
        """``(slowest, median, best)`` GB/s over the repetitions of the fastest stream of ``kind``."""
        ts = self._stream(kind)
        return tuple(self._bytes(kind) / t / 1e9 for t in (max(ts), statistics.median(ts), min(ts)))

    def seconds(self, reads: float, writes: float) -> float:
        """The bound: the fewest seconds in which ``reads`` input-sized tensors can be read and
        ``writes`` written. Pairs of one read and one write take the copy's best time (or a read's
        and a write's, if that is less); the reads or writes left over take their own stream's."""
        if reads < 0 or writes < 0:
            raise ValueError(f"expected counts of tensors >= 0, got reads={reads}, writes={writes}")
        read, write, copy = (min(self._stream(kind)) for kind in ("read", "write", "copy"))
        pairs = min(reads, writes)
        return pairs * min(copy, read + write) + (reads - pairs) * read + (writes - pairs) * write

    def bound_gbps(self, reads: float, writes: float) -> float:
        """GB/s of the bound for a kernel that reads ``reads`` and writes ``writes`` tensors."""
        return (reads + writes) * self.nbytes / self.seconds(reads, writes) / 1e9


@dataclass
class Timing:
    """:func:`time_with_roof`'s result: the kernels' median seconds, every repetition, the roof and,
    if asked for, the arithmetic peak."""

    seconds: dict[str, float]
    samples: dict[str, list[float]]
    roof: Roof
    matmul_gflops: dict[int, float] = field(default_factory=dict)  # best GFLOP/s of each size n
    mixes: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(MIXES))

    @property
    def peak_gflops(self) -> float | None:
        """The arithmetic roof: the best GFLOP/s of the matrix products, if any were timed."""
        return max(self.matmul_gflops.values(), default=None)

    def bound(self, mode: str) -> float:
        """Seconds of the bound for ``mode`` (a key of :data:`MIXES`)."""
        return self.roof.seconds(*self.mixes[mode])

    def gbps(self, name: str, mode: str) -> float:
        """Effective bandwidth of ``name``: the bytes ``mode`` must move at least, over its median."""
        reads, writes = self.mixes[mode]
        return (reads + writes) * self.roof.nbytes / self.seconds[name] / 1e9

    def share(self, name: str, mode: str) -> float:
        """The fraction of its bound that ``name`` reached: bound seconds over its median seconds."""
        return self.bound(mode) / self.seconds[name]


def _matmul(n: int, device: torch.device) -> Callable[[], object]:
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    return lambda: a @ b


def time_with_roof(fns: dict[str, Callable[[], object]], x: torch.Tensor, reps: int = 20,
                   warmup: int = 3, matmul: Sequence[int] = (), settle: int = 0) -> Timing:
    """Time ``fns`` interleaved with the roof's streams over ``x``.

    With ``matmul=(n, ...)``, ``n x n`` float32 matrix products (the friendliest arithmetic there
    is) are timed too: the arithmetic roof is the most GFLOP/s any of them reached. ``settle`` is
    :func:`time_samples`'s, for the kernels and the streams alike.
    """
    streams = stream_fns(x)
    products = {f"matmul {n}": (n, _matmul(n, x.device)) for n in matmul}
    clash = sorted(set(fns) & (set(streams) | set(products)))
    if clash:
        raise ValueError(f"names {clash} are the roof's own; name the kernels otherwise")
    timed = {**fns, **streams, **{name: fn for name, (_, fn) in products.items()}}
    samples = time_samples(timed, reps, warmup, x.device, settle)
    roof = Roof(x.numel() * x.element_size(), {k: samples.pop(k) for k in streams})
    matmul_gflops = {n: 2 * n**3 / min(samples.pop(name)) / 1e9 for name, (n, _) in products.items()}
    return Timing({k: statistics.median(v) for k, v in samples.items()}, samples, roof, matmul_gflops)


class _ReadableFunction(torch.autograd.Function):
    """Training-mode batch norm on the readable kernels, as ``bncourse.autograd.BatchNormFunction``
    runs the tuned ones: the same autograd path, for timing the two alike."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        out, cache = readable_kernels.batch_norm_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, cache.mean, cache.inv_std, weight)
        ctx.eps = eps
        ctx.mark_non_differentiable(cache.mean, cache.var)
        return out, cache.mean, cache.var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, _dmean, _dvar):
        x, mean, inv_std, weight = ctx.saved_tensors
        cache = readable_kernels.BatchNormCache(x, mean, None, inv_std, weight, ctx.eps)
        dx, dgamma, dbeta = readable_kernels.batch_norm_backward_fused(dout.contiguous(), cache)
        need_x, need_weight, need_bias, _ = ctx.needs_input_grad
        return dx if need_x else None, dgamma if need_weight else None, dbeta if need_bias else None, None


def readable_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
                        momentum=0.1, eps=1e-5):
    """``torch.nn.functional.batch_norm`` on the readable kernels of chapter 3
    (:func:`bncourse.kernels.batch_norm_forward`, ``batch_norm_backward_fused``, ``batch_norm_eval``).

    It runs them through autograd and updates the running statistics as
    :func:`bncourse.functional.batch_norm` runs the tuned kernels, so that a timing of the two
    compares the kernels and nothing else. For measuring; the package's layers never call it.
    """
    if not training:
        return readable_kernels.batch_norm_eval(input, running_mean, running_var, weight, bias, eps)
    out, mean, var = _ReadableFunction.apply(input, weight, bias, eps)
    readable_kernels.update_running_stats(running_mean, running_var, mean, var, momentum, input)
    return out


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


def first_call(fn: Callable[[], object]) -> tuple[float, str]:
    """Seconds of the first call of a compiled ``fn``, and what it did: ``"compiled"``, ``"loaded from
    Inductor's disk cache"``, or ``"nothing compiled"`` (no graph went through Inductor)."""
    from torch._dynamo.utils import counters

    hits = counters["inductor"]["fxgraph_cache_hit"]
    misses = counters["inductor"]["fxgraph_cache_miss"]
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    if counters["inductor"]["fxgraph_cache_miss"] > misses:
        return seconds, "compiled"
    if counters["inductor"]["fxgraph_cache_hit"] > hits:
        return seconds, "loaded from Inductor's disk cache"
    return seconds, "nothing compiled"


def page_faults(fn: Callable[[], object], reps: int = 10) -> float:
    """Page faults per call of ``fn``: first touches of memory the operating system hands out anew.

    Counted by the process's minor-fault counter (``getrusage``); ``nan`` where there is none (Windows).
    """
    try:
        import resource
    except ImportError:
        return math.nan
    fn()  # a first call may set up what later calls reuse
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(reps):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / reps


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> bool:
    """Tell glibc to keep freed memory for reuse, for the rest of the process; ``True`` if it could.

    By default glibc maps each large block anew and hands it back on free, so every call's fresh
    tensors page-fault on first touch. After this, every block comes from the heap (``M_MMAP_MAX``
    0) and the heap is never trimmed (``M_TRIM_THRESHOLD``): after a call or two that grow the heap,
    a call finds its memory mapped already, as PyTorch's caching allocator keeps it on a GPU.
    Elsewhere (macOS, Windows, musl) it does nothing and returns ``False``.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


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
