"""Benchmark: this package's ``batch_norm`` against PyTorch's, on the default device.

    python -m bncourse.bench            # full run
    python -m bncourse.bench --quick    # fewer repetitions, under 30 s on a 2-core CPU

Times are medians of interleaved runs (ours and PyTorch's alternate, so drifting clocks and caches
hurt both alike). GB/s counts the bytes a fused kernel must move at least: forward reads x and
writes y; forward+backward adds reading dy and x and writing dx. Peak memory is measured per case
in a fresh process on the CPU (the growth of the resident-set high-water mark, with glibc told to
return every large block to the OS on free so that RSS follows the live tensors) and with
``max_memory_allocated`` on CUDA; it is reported in input-sized tensors above the inputs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as TF

from . import functional as F
from .device import default_device

SHAPES = [(16384, 256), (32, 64, 56, 56)]
IMPLS = {"torch": TF.batch_norm, "ours": F.batch_norm}


def make_inputs(shape, device, seed=0):
    g = torch.Generator().manual_seed(seed)
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


MODES = {"train fwd+bwd": (train_step, 5), "eval fwd": (eval_step, 2)}  # bytes moved, in tensors


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(step, inputs, device, reps, warmup=3):
    """Median milliseconds of ``step(fn, inputs)`` per implementation, runs alternating."""
    times = {name: [] for name in IMPLS}
    for i in range(warmup + reps):
        for name, fn in IMPLS.items():
            sync(device)
            start = time.perf_counter()
            step(fn, inputs)
            sync(device)
            if i >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


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
        code = f"from bncourse.bench import cpu_peak_child; cpu_peak_child({impl!r}, {shape!r})"
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


def run(quick: bool = False, device=None) -> float:
    device = device or default_device()
    reps = 7 if quick else 30
    print(f"bncourse benchmark on {device} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads), float32, median of {reps} interleaved runs")
    header = f"{'shape':<18} {'mode':<14} {'torch ms':>9} {'ours ms':>9} {'torch GB/s':>10} " \
             f"{'ours GB/s':>10} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for shape in SHAPES:
        inputs = make_inputs(shape, device)
        nbytes = inputs["x"].numel() * inputs["x"].element_size()
        for mode, (step, tensors) in MODES.items():
            ms = time_interleaved(step, inputs, device, reps)
            ratio = ms["ours"] / ms["torch"]
            worst = max(worst, ratio)
            gbs = {k: tensors * nbytes / (v * 1e-3) / 1e9 for k, v in ms.items()}
            print(f"{str(shape):<18} {mode:<14} {ms['torch']:>9.2f} {ms['ours']:>9.2f} "
                  f"{gbs['torch']:>10.1f} {gbs['ours']:>10.1f} {ratio:>6.2f}")
    print()
    print("peak memory of one train forward+backward, above the inputs (in input-sized tensors):")
    for shape in SHAPES:
        peaks = {impl: peak_memory(impl, shape, device) for impl in IMPLS}
        print(f"  {str(shape):<18} torch {peaks['torch']:.2f}   ours {peaks['ours']:.2f}   "
              f"ours - torch {peaks['ours'] - peaks['torch']:+.2f}")
    print()
    print(f"worst ratio vs torch: {worst:.2f}")
    return worst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bncourse.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (under 30 s on a CPU)")
    parser.add_argument("--device", help="device to run on (default: bncourse.default_device())")
    args = parser.parse_args(argv)
    run(args.quick, torch.device(args.device) if args.device else None)


if __name__ == "__main__":
    main()
