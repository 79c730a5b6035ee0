"""The benchmark runs end to end (its timings are reported, never asserted)."""

import pytest
import torch

from bncourse.lab import bench


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, inside torch.compile
def test_benchmark_prints_its_table_and_worst_ratio(capsys, monkeypatch):
    monkeypatch.setattr(bench, "SHAPES", [(8200, 8)])  # the compiling tests' shape: compiled once
    worst = bench.run(quick=True, device=torch.device("cpu"))
    out = capsys.readouterr().out
    assert "train fwd+bwd" in out and "eval" in out and "peak memory" in out and "compiled" in out
    assert out.strip().splitlines()[-1] == f"worst ratio vs torch: {worst:.2f}"


def test_peak_memory_of_torch_and_ours_on_the_cpu():
    # 16 MiB: page-level noise and the fixed 4 MiB slice of channel_sums are small against it
    shape = (16384, 256)
    torch_peak = bench.peak_memory("torch", shape, torch.device("cpu"))
    ours_peak = bench.peak_memory("eager", shape, torch.device("cpu"))
    # the output and the input gradient; the goal for ours: at most one input-sized tensor more
    assert 1.5 < torch_peak < 3.5 and ours_peak <= torch_peak + 1.0
