"""The check to run whenever a machine with CUDA GPUs is at hand: ``make gpu-check``.

    python -m bncourse.lab.gpucheck [--out _build/gpu-check] [--quick]

It runs, one after another, and writes one report, ``OUT/report.md``, with each step's command,
exit status, seconds and the tail of its output (full outputs beside it):

1. the environment: torch and its CUDA, the GPUs, Triton, NCCL;
2. the CUDA tests: every test the ``device`` fixture runs on CUDA, and the NCCL tests
   (``pytest tests -k "cuda or nccl"``);
3. the benchmark on the GPU (``python -m bncourse.lab.bench --device cuda``), whose compiled paths
   Inductor writes in Triton;
4. SyncBatchNorm over NCCL on every GPU there is: one process per GPU, uneven shards, float64, the
   output, the input and parameter gradients and the running statistics against one process's
   ``torch.nn.BatchNorm2d`` on the whole batch, and the host syncs a step makes (CUDA's sync debug
   mode counts them);
5. chapter 7's pages executed on the GPU, stored in ``OUT/notebooks`` (skipped with ``--quick``):
   the chapters quote GPU numbers only from such a run.

Without a CUDA GPU it stops at once with exit status 2 and says why. The exit status is 1 if any
step failed, 0 if all passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]  # the repository, for tests/ and book/
TAIL_LINES = 60


@dataclass
class Step:
    title: str
    command: str
    status: int
    seconds: float
    output: str

    @property
    def passed(self) -> bool:
        return self.status == 0


def no_gpu_reason() -> str | None:
    """``None`` if a CUDA GPU is usable here, else a sentence that says why not and what to do."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return (f"this torch ({torch.__version__}) is built without CUDA: on a GPU machine install "
                f"the CUDA build (pip install torch=={torch.__version__.split('+')[0]} from PyPI)")
    return (f"torch {torch.__version__} is built with CUDA {torch.version.cuda}, but "
            "torch.cuda.is_available() is False: no GPU is visible (check nvidia-smi and "
            "CUDA_VISIBLE_DEVICES)")


def environment() -> str:
    """What the run ran on, one item a line."""
    from torch.utils._triton import has_triton

    lines = [f"python {platform.python_version()}, torch {torch.__version__}, "
             f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"]
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        lines.append(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, "
                     f"compute capability {p.major}.{p.minor}")
    if has_triton():
        import triton

        lines.append(f"triton {triton.__version__}")
    else:
        lines.append("triton: not installed (the compiled paths cannot be compiled on CUDA)")
    try:
        lines.append("NCCL " + ".".join(map(str, torch.cuda.nccl.version())))
    except Exception as e:  # a build without NCCL
        lines.append(f"NCCL: not available ({e})")
    return "\n".join(lines)


def run_command(title: str, argv: list[str], out: Path, env: dict | None = None,
                timeout: float = 3600) -> Step:
    """Run ``argv`` in the repository, its output kept in ``out/<slug>.txt``."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        status, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        status, output = 124, f"{e.stdout or ''}{e.stderr or ''}\n(timed out after {timeout:.0f} s)"
    slug = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")
    (out / f"{slug}.txt").write_text(output)
    shown = " ".join(argv)
    if env:
        shown = " ".join(f"{k}={v}" for k, v in env.items()) + " " + shown
    return Step(title, shown, status, time.perf_counter() - start, output)


def sync_batch_norm_check(sizes: list[int], seed: int = 0) -> dict:
    """In each process of a process group: two training steps of ``bn.nn.SyncBatchNorm`` on this
    rank's shard of a batch, against ``torch.nn.BatchNorm2d`` on the whole batch (computed in every
    process alike); the largest differences, and the host syncs of the second step on CUDA."""
    import torch.distributed as dist

    from .. import nn as bnn

    rank = dist.get_rank()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    g = torch.Generator().manual_seed(seed)
    c = 3
    x = torch.randn(sum(sizes), c, 5, 4, generator=g, dtype=torch.float64) * 2 + 3
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    gamma, beta = torch.rand(c, generator=g, dtype=torch.float64) + 0.5, torch.randn(c, generator=g,
                                                                                     dtype=torch.float64)
    ours = bnn.SyncBatchNorm(c, momentum=0.3).to(device, torch.float64)
    ref = torch.nn.BatchNorm2d(c, momentum=0.3).to(device, torch.float64)
    with torch.no_grad():
        for layer in (ours, ref):
            layer.weight.copy_(gamma)
            layer.bias.copy_(beta)
    start = sum(sizes[:rank])
    mine = slice(start, start + sizes[rank])
    syncs = 0
    for step in range(2):  # the first step also sets up NCCL's communicators
        xs = x[mine].clone().to(device).requires_grad_()
        xr = x.clone().to(device).requires_grad_()
        for layer in (ours, ref):
            layer.weight.grad = layer.bias.grad = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if device.type == "cuda" and step == 1:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                out = ours(xs)
                out.backward(dy[mine].to(device))
            finally:
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
        if step == 1:
            syncs = sum("synchroniz" in str(w.message) for w in caught)
        out_ref = ref(xr)
        out_ref.backward(dy.to(device))
    grads = [ours.weight.grad.clone(), ours.bias.grad.clone()]
    for grad in grads:  # each process holds its shard's share: the sum is the whole batch's
        dist.all_reduce(grad)

    def err(a, b):
        return (a.detach() - b.detach()).abs().max().item()

    return {
        "rank": rank, "rows": sizes[rank], "host_syncs": syncs,
        "errors": {"out": err(out, out_ref[mine]), "dx": err(xs.grad, xr.grad[mine]),
                   "dweight": err(grads[0], ref.weight.grad), "dbias": err(grads[1], ref.bias.grad),
                   "running_mean": err(ours.running_mean, ref.running_mean),
                   "running_var": err(ours.running_var, ref.running_var),
                   "num_batches_tracked": err(ours.num_batches_tracked.double(),
                                              ref.num_batches_tracked.double())},
    }


def run_sync_check(world_size: int, backend: str = "nccl", tolerance: float = 1e-10) -> tuple[bool, str]:
    """:func:`sync_batch_norm_check` in ``world_size`` processes; (passed, a report in lines)."""
    from .distributed import Cluster

    sizes = [3 + rank for rank in range(world_size)]  # uneven shards
    with Cluster(world_size, backend=backend, timeout=300) as cluster:
        ranks = cluster.run(sync_batch_norm_check, sizes)
    worst = {key: max(r["errors"][key] for r in ranks) for key in ranks[0]["errors"]}
    syncs = max(r["host_syncs"] for r in ranks)
    lines = [f"{world_size} processes ({backend}), shards of {sizes} rows, float64"]
    lines += [f"  largest difference, {key}: {value:.1e}" for key, value in worst.items()]
    lines.append(f"  host syncs in a training step (CUDA's sync debug mode): {syncs}"
                 if backend == "nccl" else "  host syncs: counted on CUDA only")
    passed = max(worst.values()) <= tolerance and syncs == 0
    lines.append("passed" if passed else f"FAILED (tolerance {tolerance:.0e}, host syncs allowed: 0)")
    return passed, "\n".join(lines)


def write_report(path: Path, env: str, steps: list[Step]) -> None:
    lines = ["# bncourse gpu-check", "", f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}", "", "```", env, "```",
             "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s.title} | {'passed' if s.passed else f'FAILED ({s.status})'} | {s.seconds:.0f} |"
              for s in steps]
    for s in steps:
        tail = "\n".join(s.output.rstrip().splitlines()[-TAIL_LINES:])
        lines += ["", f"## {s.title}", "", f"`{s.command}`: exit status {s.status}, {s.seconds:.0f} s",
                  "", "```", tail, "```"]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bncourse.lab.gpucheck",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="_build/gpu-check", help="folder for the report and outputs")
    parser.add_argument("--quick", action="store_true", help="a quick bench; chapter 7 not executed")
    args = parser.parse_args(argv)
    reason = no_gpu_reason()
    if reason is not None:
        print(f"make gpu-check needs a CUDA GPU: {reason}", file=sys.stderr)
        return 2
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(env, flush=True)
    python = sys.executable
    steps = []

    def record(step: Step) -> None:
        steps.append(step)
        print(f"{step.title}: {'passed' if step.passed else 'FAILED'} ({step.seconds:.0f} s)", flush=True)
        write_report(out / "report.md", env, steps)  # a report so far, should a later step hang

    record(run_command("CUDA tests", [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests",
                                      "--ignore=tests/test_browser.py", "-k", "cuda or nccl"], out))
    bench = [python, "-m", "bncourse.lab.bench", "--device", "cuda"] + (["--quick"] if args.quick else [])
    record(run_command("benchmark on the GPU", bench, out))
    start = time.perf_counter()
    k = torch.cuda.device_count()
    try:
        passed, text = run_sync_check(k) if k >= 2 else (True, f"{k} GPU: one process; nothing to sync")
        status = 0 if passed else 1
    except Exception as e:
        status, text = 1, f"{type(e).__name__}: {e}"
    record(Step(f"SyncBatchNorm over NCCL on {k} GPUs", "bncourse.lab.gpucheck.run_sync_check", status,
                time.perf_counter() - start, text))
    if not args.quick:
        pages = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "book").glob("07*.ipynb"))
        record(run_command("chapter 7 on the GPU", [
            python, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
            "--ExecutePreprocessor.timeout=1800", "--output-dir", str(out / "notebooks"), *pages],
            out, env={"BNCOURSE_DEVICE": "cuda"}))
    failed = [s.title for s in steps if not s.passed]
    print(f"report: {out / 'report.md'}" + (f"; failed: {', '.join(failed)}" if failed else "; all passed"))
    (out / "summary.json").write_text(json.dumps({s.title: s.status for s in steps}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
