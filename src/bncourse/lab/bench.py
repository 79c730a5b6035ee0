"""Benchmark: this package's ``batch_norm`` against PyTorch's, on the default device.

    python -m bncourse.lab.bench            # full run
    python -m bncourse.lab.bench --quick    # fewer repetitions

Three contenders: PyTorch's ``torch.nn.functional.batch_norm``, ours with the eager kernels
(:mod:`bncourse.tuned`) and ours compiled (``compiled=True``, :mod:`bncourse.compiled`). Times are
medians of interleaved runs (the contenders alternate, so drifting clocks and caches hurt all alike);
the compiled path's first call, which compiles, is timed apart. GB/s counts the bytes a fused kernel
must move at least: forward reads x and writes y; forward+backward adds reading dy and x and writing
dx. The roof is the measured bandwidth of copying a tensor of the input's size. Peak memory is
measured per case in a fresh process on the CPU (the growth of the resident-set high-water mark,
with glibc told to return every large block to the OS on free so that RSS follows the live tensors)
and with ``max_memory_allocated`` on CUDA; it is reported in input-sized tensors above the inputs.
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as TF

from .. import functional as F
from .device import default_device, generator
from .hardware import TENSOR_PASSES, copy_bandwidth, sync, time_interleaved

SHAPES = [(16384, 256), (32, 64, 56, 56)]
IMPLS = {"torch": TF.batch_norm, "eager": F.batch_norm,
         "compiled": functools.partial(F.batch_norm, compiled=True)}


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
    y = fn(t["x"], t["running_mean"], t["running_var"], t["weight"], t["bias"], training=True)
    y.backward(t["dy"])
    for p in (t["x"], t["weight"], t["bias"]):
        p.grad = None


def eval_step(fn, t):
    with torch.no_grad():
        fn(t["x"], t["running_mean"], t["running_var"], t["weight"], t["bias"], training=False)


MODES = {"train fwd+bwd": train_step, "eval": eval_step}


def peak_memory(impl, shape, device):
    """Peak memory of one train forward+backward above its inputs, in input-sized tensors."""
    if device.type == "cuda":
        t = make_inputs(shape, device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        train_step(IMPLS[impl], t)
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
    train_step(IMPLS[impl], t)  # load kernels and thread pools before the baseline
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the RSS high-water mark (VmHWM) to the current RSS
    before = proc_status_bytes("VmRSS")
    train_step(IMPLS[impl], t)
    print(json.dumps(proc_status_bytes("VmHWM") - before))


def first_call_seconds(step, inputs, device) -> float:
    """Seconds of the compiled path's first call: compilation, or loading it from Inductor's cache."""
    sync(device)
    start = time.perf_counter()
    step(IMPLS["compiled"], inputs)
    sync(device)
    return time.perf_counter() - start


def run(quick: bool = False, device=None) -> float:
    """Print the table; return the worst ratio of the compiled path's time to PyTorch's."""
    device = device or default_device()
    reps = 7 if quick else 30
    print(f"bncourse benchmark on {device} (torch {torch.__version__}, {torch.get_num_threads()} threads), "
          f"float32, median of {reps} interleaved runs")
    header = (f"{'shape':<17} {'mode':<13} {'compile s':>9} {'torch ms':>8} {'eager ms':>8} "
              f"{'comp ms':>8} {'roof GB/s':>9} {'torch %':>7} {'comp %':>6} {'eager/t':>7} {'comp/t':>6}")
    print(header)
    print("-" * len(header))
    worst = 0.0
    for shape in SHAPES:
        inputs = make_inputs(shape, device)
        nbytes = inputs["x"].numel() * inputs["x"].element_size()
        roof = copy_bandwidth(nbytes, device, reps=reps)
        for mode, step in MODES.items():
            compile_s = first_call_seconds(step, inputs, device)
            fns = {name: functools.partial(step, fn, inputs) for name, fn in IMPLS.items()}
            ms = {k: v * 1e3 for k, v in time_interleaved(fns, reps, device=device).items()}
            ratio = ms["compiled"] / ms["torch"]
            worst = max(worst, ratio)
            pct = {k: 100 * TENSOR_PASSES[mode] * nbytes / (v * 1e-3) / 1e9 / roof for k, v in ms.items()}
            print(f"{str(shape):<17} {mode:<13} {compile_s:>9.1f} {ms['torch']:>8.2f} {ms['eager']:>8.2f} "
                  f"{ms['compiled']:>8.2f} {roof:>9.1f} {pct['torch']:>6.0f}% {pct['compiled']:>5.0f}% "
                  f"{ms['eager'] / ms['torch']:>7.2f} {ratio:>6.2f}")
    print("(% = the fraction of the copy roof: bytes a fused kernel must move / time / copy bandwidth)")
    print()
    print("peak memory of one train forward+backward, above the inputs (in input-sized tensors):")
    for shape in SHAPES:
        peaks = {impl: peak_memory(impl, shape, device) for impl in IMPLS}
        print(f"  {str(shape):<18} " + "   ".join(f"{k} {v:.2f}" for k, v in peaks.items()))
    print()
    print(f"worst ratio vs torch: {worst:.2f}")
    return worst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bncourse.lab.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--device", help="device to run on (default: bncourse.default_device())")
    args = parser.parse_args(argv)
    run(args.quick, torch.device(args.device) if args.device else None)


if __name__ == "__main__":
    main()
