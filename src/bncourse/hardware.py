"""Chapter 7's measurements: time kernels fairly, the machine's roofs, bytes and flops of batch norm.

Timings are medians of interleaved runs: the contenders alternate, so a clock that drifts or a
neighbour that wakes up hurts them alike.
"""

import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["TENSOR_PASSES", "copy_bandwidth", "matmul_flops", "time_interleaved"]

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
