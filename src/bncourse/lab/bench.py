"""Benchmark: this package's ``batch_norm`` against PyTorch's, on the default device.

    python -m bncourse.lab.bench            # five runs (make bench)
    python -m bncourse.lab.bench --quick    # fewer repetitions per run
    python -m bncourse.lab.bench --runs 9 --device cuda

Four contenders, each called as ``torch.nn.functional.batch_norm`` is, through the same step
(autograd, the backward and the running-statistics update in training; ``torch.no_grad`` in eval):
PyTorch's ``batch_norm``; the peer a user would try first, ``torch.compile`` of PyTorch's
``batch_norm``; ours with the eager kernels (:mod:`bncourse.tuned`); ours compiled (``compiled=True``,
:mod:`bncourse.compiled`). The compiled paths' first calls, which compile (or load Inductor's disk
cache), are timed apart.

A run times every contender interleaved with the roof's streams (a read, a write and a copy of a
tensor of the input's size: :func:`~bncourse.lab.hardware.time_with_roof`), each the median of its
repetitions. Each timed call follows an untimed call of the same function, so that it finds the
caches as it leaves them: not holding the previous contender's output, whose dirty lines the next
one would pay to write back. The command keeps freed memory for reuse
(:func:`~bncourse.lab.hardware.reuse_freed_memory`), as a GPU's caching allocator does: otherwise
glibc maps each large output anew and how many calls page-fault depends on the heap's layout in that
process, which swings a contender's time by more than the kernels differ. Each case reports the page
faults per call of every contender (``--fresh-pages`` leaves glibc's default).
The bench makes several runs, one after another, and reports for each contender the median over
the runs with their minimum and maximum; the ratios to PyTorch and to ``torch.compile`` are taken
between those medians. The bound of a mode is the fewest seconds in which the tensors it must move
can be read and written (:data:`~bncourse.lab.hardware.MIXES`; its best over the runs), and each
contender's share of it is the bound over its median time.

Peak memory is measured per case in a fresh process on the CPU (the growth of the resident-set
high-water mark, with glibc told to return every large block to the OS on free so that RSS follows
the live tensors) and with ``max_memory_allocated`` on CUDA; it is reported in input-sized tensors
above the inputs.
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as TF

from .. import compiled as C
from .. import functional as F
from .device import default_device, generator
from .hardware import (
    MIXES,
    first_call,
    page_faults,
    readable_batch_norm,
    reuse_freed_memory,
    sync,
    time_with_roof,
)

SHAPES = [(16384, 256), (32, 64, 56, 56)]
CONTENDERS = ("torch", "torch.compile", "ours eager", "ours compiled")
COMPILED = ("torch.compile", "ours compiled")
OURS = "ours compiled"  # the path the worst ratio is about


@functools.cache
def _torch_compiled():
    # torch.compile with the vector width stated, so that Inductor's disk cache does not hand code
    # written for one width to a run under another (bncourse.compiled.compile_kernel)
    return C.compile_kernel(TF.batch_norm)


def contender(name: str):
    """The function, with ``torch.nn.functional.batch_norm``'s signature, that ``name`` runs: one of
    :data:`CONTENDERS`, or ``"readable"`` (the readable kernels, which the chapter measures too)."""
    if name == "readable":
        return readable_batch_norm
    if name == "torch":
        return TF.batch_norm
    if name == "torch.compile":
        return _torch_compiled()
    if name == "ours eager":
        return F.batch_norm
    if name == "ours compiled":
        return functools.partial(F.batch_norm, compiled=True)
    raise ValueError(f"expected one of {', '.join(CONTENDERS)} or 'readable', got {name!r}")


def make_inputs(shape, device, seed=0):
    g = generator(seed)
    c = shape[1]
    x = torch.randn(shape, generator=g).to(device)
    return {
        "x": x.requires_grad_(),
        "dy": torch.randn(shape, generator=g).to(device),
        "weight": torch.rand(c, generator=g).add_(0.5).to(device).requires_grad_(),
        "bias": torch.randn(c, generator=g).to(device).requires_grad_(),
        "running_mean": torch.zeros(c, device=device),
        "running_var": torch.ones(c, device=device),
    }


def train_step(fn, t):
    """One training step of ``fn``: forward, backward of ``dy``, running statistics updated."""
    y = fn(t["x"], t["running_mean"], t["running_var"], t["weight"], t["bias"], training=True)
    y.backward(t["dy"])
    for p in (t["x"], t["weight"], t["bias"]):
        p.grad = None


def eval_step(fn, t):
    with torch.no_grad():
        fn(t["x"], t["running_mean"], t["running_var"], t["weight"], t["bias"], training=False)


MODES = {"train fwd+bwd": train_step, "eval": eval_step}


def measure(inputs, mode, names=CONTENDERS, reps=30):
    """One run: ``names`` in ``mode`` on ``inputs``, interleaved with the roof's streams."""
    step = MODES[mode]
    fns = {name: functools.partial(step, contender(name), inputs) for name in names}
    return time_with_roof(fns, inputs["x"], reps=reps, settle=1)


def faults_per_call(inputs, mode, names=CONTENDERS):
    """Page faults per call of each of ``names`` in ``mode`` (:func:`~bncourse.lab.hardware.page_faults`)."""
    step = MODES[mode]
    return {name: page_faults(functools.partial(step, contender(name), inputs), reps=5) for name in names}


def peak_memory(impl, shape, device):
    """Peak memory of one train forward+backward above its inputs, in input-sized tensors."""
    if device.type == "cuda":
        t = make_inputs(shape, device)
        train_step(contender(impl), t)  # compile first, where it compiles
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        train_step(contender(impl), t)
        torch.cuda.synchronize(device)
        extra = torch.cuda.max_memory_allocated(device) - base
    elif device.type == "cpu" and sys.platform == "linux":
        code = f"from bncourse.lab.bench import cpu_peak_child; cpu_peak_child({impl!r}, {shape!r})"
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=env)
        extra = json.loads(out.stdout.strip().splitlines()[-1])
    else:
        return float("nan")
    return extra / (torch.Size(shape).numel() * 4)


def proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{key} not found in /proc/self/status")


def cpu_peak_child(impl, shape):
    """Run in a fresh process (Linux): print the growth of peak RSS, in bytes, over one train step."""
    t = make_inputs(shape, torch.device("cpu"))
    train_step(contender(impl), t)  # load kernels and thread pools (and compile) before the baseline
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the RSS high-water mark (VmHWM) to the current RSS
    before = proc_status_bytes("VmRSS")
    train_step(contender(impl), t)
    print(json.dumps(proc_status_bytes("VmHWM") - before))


def first_call_seconds(name, step, inputs, device) -> float:
    """Seconds of a compiled contender's first call: compilation, or loading Inductor's cache."""
    sync(device)
    seconds, _ = first_call(lambda: (step(contender(name), inputs), sync(device)))
    return seconds


def summarize(timings, mode):
    """Medians over the runs (with their min and max), the bound and each contender's share of it."""
    names = list(timings[0].seconds)
    per_run = {name: [t.seconds[name] for t in timings] for name in names}
    median = {name: statistics.median(ts) for name, ts in per_run.items()}
    bound = min(t.bound(mode) for t in timings)
    return {
        "median": median,
        "min": {name: min(ts) for name, ts in per_run.items()},
        "max": {name: max(ts) for name, ts in per_run.items()},
        "bound": bound,
        "share": {name: bound / s for name, s in median.items()},
        "roof": [t.roof.bound_gbps(*MIXES[mode]) for t in timings],
    }


def _shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def print_summary(shape, mode, s, nbytes, faults):
    reads, writes = MIXES[mode]
    roof = s["roof"]
    print(f"{_shape(shape)} {mode}: reads {reads} and writes {writes} tensors of "
          f"{nbytes / 2**20:.1f} MiB at least")
    print(f"  bound {s['bound'] * 1e3:.3f} ms: roof {max(roof):.1f} GB/s, its best per run "
          f"{min(roof):.1f} to {max(roof):.1f} GB/s")
    print(f"  {'contender':<14} {'median ms':>9} {'min - max over runs':>21} {'of bound':>8} "
          f"{'vs torch':>8} {'vs torch.compile':>16} {'faults':>6}")
    med = s["median"]
    for name in med:
        spread = f"{s['min'][name] * 1e3:.3f} - {s['max'][name] * 1e3:.3f}"
        peer = f"{med[name] / med['torch.compile']:.2f}" if "torch.compile" in med else "-"
        flag = "  above its bound!" if s["share"][name] > 1 else ""
        print(f"  {name:<14} {med[name] * 1e3:>9.3f} {spread:>21} {s['share'][name]:>8.0%} "
              f"{med[name] / med['torch']:>8.2f} {peer:>16} {faults[name]:>6.0f}{flag}")


def run(quick: bool = False, device=None, runs: int = 5, memory: bool = True) -> float:
    """Print the tables; return the worst ratio of the compiled path's median time to PyTorch's."""
    device = device or default_device()
    reps = 7 if quick else 30
    if runs < 1:
        raise ValueError(f"expected at least one run, got runs={runs}")
    names = list(CONTENDERS)
    reason = C.available(device)
    if reason is not None:  # ours falls back to the eager kernels with a warning; the peer cannot
        names.remove("torch.compile")
        print(f"no compiler here ({reason}): no torch.compile column, ours compiled runs eagerly")
    threads = torch.get_num_threads()
    print(f"bncourse benchmark on {device} (torch {torch.__version__}, {threads} "
          f"thread{'s' if threads > 1 else ''}), float32: {runs} runs, each the median of {reps} "
          "interleaved calls")
    inputs = {shape: make_inputs(shape, device) for shape in SHAPES}
    print("first calls of the compiled paths (compiling, or loading Inductor's disk cache):")
    for shape in SHAPES:
        for mode, step in MODES.items():
            firsts = {name: first_call_seconds(name, step, inputs[shape], device)
                      for name in COMPILED if name in names}
            print(f"  {_shape(shape):<17} {mode:<13} "
                  + "   ".join(f"{name} {s:.1f} s" for name, s in firsts.items()))
    timings = {(shape, mode): [] for shape in SHAPES for mode in MODES}
    for _ in range(runs):  # each run goes through every case, so a slow spell hits one run
        for shape in SHAPES:
            for mode in MODES:
                timings[shape, mode].append(measure(inputs[shape], mode, names, reps))
    print()
    worst, worst_peer = 0.0, 0.0
    for (shape, mode), ts in timings.items():
        s = summarize(ts, mode)
        print_summary(shape, mode, s, ts[0].roof.nbytes, faults_per_call(inputs[shape], mode, names))
        print()
        worst = max(worst, s["median"][OURS] / s["median"]["torch"])
        if "torch.compile" in s["median"]:
            worst_peer = max(worst_peer, s["median"][OURS] / s["median"]["torch.compile"])
    print("(of bound: the bound's time over the median time; the bound reads and writes what the")
    print(" mode must move at least, at the best rate this machine's streams reached beside it;")
    print(" faults: page faults per call, each a page of memory the OS hands out and zeroes)")
    print()
    if memory:
        print("peak memory of one train forward+backward, above the inputs (in input-sized tensors):")
        for shape in SHAPES:
            peaks = {impl: peak_memory(impl, shape, device) for impl in names}
            print(f"  {_shape(shape):<17} " + "   ".join(f"{k} {v:.2f}" for k, v in peaks.items()))
        print()
    if "torch.compile" in names:
        print(f"worst ratio vs torch.compile: {worst_peer:.2f}")
    print(f"worst ratio vs torch: {worst:.2f}")
    return worst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bncourse.lab.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions in each run")
    parser.add_argument("--runs", type=int, default=5, help="runs, one after another (default 5)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory table")
    parser.add_argument("--device", help="device to run on (default: bncourse.default_device())")
    parser.add_argument("--fresh-pages", action="store_true",
                        help="leave glibc's default, which maps large blocks anew (their faults timed)")
    args = parser.parse_args(argv)
    if not args.fresh_pages and reuse_freed_memory():
        print("freed memory kept for reuse (bncourse.lab.hardware.reuse_freed_memory), as a GPU's "
              "caching allocator keeps it")
    run(args.quick, torch.device(args.device) if args.device else None, args.runs, not args.no_memory)


if __name__ == "__main__":
    main()
