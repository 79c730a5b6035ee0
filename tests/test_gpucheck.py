"""make gpu-check: it stops at once without a GPU, and its SyncBatchNorm check runs on gloo too."""

import subprocess
import sys

import pytest
import torch

from bncourse.lab import gpucheck


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the check would run")
def test_without_a_gpu_it_stops_and_says_why(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bncourse.lab.gpucheck", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("make gpu-check needs a CUDA GPU: ")
    assert gpucheck.no_gpu_reason() in proc.stderr and not (tmp_path / "report.md").exists()


def test_the_sync_batch_norm_check_passes_on_gloo():
    passed, text = gpucheck.run_sync_check(2, backend="gloo")
    assert passed, text
    assert "2 processes (gloo), shards of [3, 4] rows" in text


def test_the_report_lists_every_step(tmp_path):
    steps = [gpucheck.Step("CUDA tests", "pytest", 0, 1.0, "3 passed"),
             gpucheck.Step("benchmark on the GPU", "bench", 1, 2.0, "boom")]
    gpucheck.write_report(tmp_path / "report.md", "torch x", steps)
    text = (tmp_path / "report.md").read_text()
    assert "| CUDA tests | passed | 1 |" in text and "| benchmark on the GPU | FAILED (1) | 2 |" in text
    assert text.rstrip().endswith("boom\n```".rstrip())
