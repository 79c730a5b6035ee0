"""The benchmark runs end to end (its timings are reported, never asserted)."""

import pytest
import torch

from bncourse.lab import bench, hardware


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, inside torch.compile
def test_benchmark_prints_its_runs_and_worst_ratio_last(capsys, monkeypatch):
    monkeypatch.setattr(bench, "SHAPES", [(8200, 8)])  # the compiling tests' shape: compiled once
    worst = bench.run(quick=True, device=torch.device("cpu"), runs=2, memory=False)
    out = capsys.readouterr().out
    assert "2 runs" in out and "train fwd+bwd" in out and "eval" in out and "min - max" in out
    assert out.count("faults") >= 2  # a column of page faults per call in each table
    for name in bench.CONTENDERS:
        assert out.count(f"  {name} ") >= 2, name  # a row in each mode's table
    lines = out.strip().splitlines()
    assert lines[-2].startswith("worst ratio vs torch.compile: ")
    assert lines[-1] == f"worst ratio vs torch: {worst:.2f}"


def test_the_summary_takes_medians_over_runs_and_ratios_between_them():
    roof = hardware.Roof(10**6, {"read: sum": [1e-4], "write: fill": [1e-4], "copy": [1.5e-4]})
    runs = [hardware.Timing({"torch": t, "ours compiled": o}, {}, roof)
            for t, o in ((1.0e-3, 2.0e-3), (1.2e-3, 1.0e-3), (0.9e-3, 1.1e-3))]
    s = bench.summarize(runs, "eval")
    assert s["median"] == {"torch": 1.0e-3, "ours compiled": 1.1e-3}
    assert s["min"]["ours compiled"] == 1.0e-3 and s["max"]["ours compiled"] == 2.0e-3
    assert s["bound"] == 1.5e-4 and s["share"]["torch"] == pytest.approx(0.15)


def test_peak_memory_of_torch_and_ours_on_the_cpu():
    # 16 MiB: page-level noise and the fixed 4 MiB slice of channel_sums are small against it
    shape = (16384, 256)
    torch_peak = bench.peak_memory("torch", shape, torch.device("cpu"))
    ours_peak = bench.peak_memory("ours eager", shape, torch.device("cpu"))
    # the output and the input gradient; the goal for ours: at most one input-sized tensor more
    assert 1.5 < torch_peak < 3.5 and ours_peak <= torch_peak + 1.0
