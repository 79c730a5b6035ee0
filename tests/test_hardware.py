"""Chapter 7's measuring tools (their numbers are printed by the chapter, never asserted here)."""

import platform
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as TF

import bncourse as bn
from bncourse.lab import hardware


def test_the_roof_is_measured_beside_the_kernels():
    x = torch.randn(64, 256)
    timing = hardware.time_with_roof({"double": lambda: x * 2}, x, reps=3, matmul=(16, 32))
    assert set(timing.seconds) == {"double"} and len(timing.samples["double"]) == 3
    assert set(timing.matmul_gflops) == {16, 32} and timing.roof.nbytes == x.numel() * 4
    assert timing.peak_gflops == max(timing.matmul_gflops.values()) > 0
    for kind in ("read", "write", "copy"):
        slowest, median, best = timing.roof.spread(kind)
        assert 0 < slowest <= median <= best == timing.roof.gbps(kind)
    assert "matmul 16" not in timing.samples
    with pytest.raises(ValueError, match=r"names \['copy', 'matmul 8'\] are the roof's own"):
        hardware.time_with_roof({"copy": print, "matmul 8": print}, x, reps=1, matmul=(8,))


def test_settle_calls_each_function_untimed_before_each_timed_call():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "ab"}
    samples = hardware.time_samples(fns, reps=2, warmup=1, settle=1)
    assert {name: len(ts) for name, ts in samples.items()} == {"a": 2, "b": 2}
    assert calls == ["a", "a", "b", "b"] * 3  # a function follows itself, never the other


def test_a_mix_pairs_reads_with_writes_at_the_copys_rate():
    # best seconds per tensor: read 1, write 2, copy (one read and one write) 2.5
    roof = hardware.Roof(10**9, {"read: sum": [1.5, 1.0], "read: amax": [1.2, 1.1],
                                 "write: fill": [2.0, 3.0], "copy": [2.5, 4.0]})
    assert roof.seconds(1, 1) == 2.5 and roof.seconds(3, 2) == 2 * 2.5 + 1.0
    assert roof.seconds(0, 2) == 4.0 and roof.gbps("copy") == 2 / 2.5
    assert roof.bound_gbps(3, 2) == pytest.approx(5 / 6)
    assert roof.spread("read") == (1 / 1.5, 1 / 1.25, 1.0)
    # a copy slower than a read and a write one after the other: they are the bound
    slow_copy = hardware.Roof(10**9, {"read: sum": [1.0], "write: fill": [2.0], "copy": [4.0]})
    assert slow_copy.seconds(1, 1) == 3.0
    with pytest.raises(ValueError, match="expected a stream kind"):
        roof.gbps("flops")
    timing = hardware.Timing({"k": 10.0}, {"k": [10.0]}, roof)
    assert timing.share("k", "train fwd+bwd") == pytest.approx(0.6)
    assert timing.gbps("k", "eval") == pytest.approx(0.2)


@pytest.mark.parametrize("training", [True, False])
def test_readable_batch_norm_is_torchs_batch_norm_on_the_readable_kernels(training):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 4, generator=g, dtype=torch.float64) * 3 + 2
    results = []
    for fn in (hardware.readable_batch_norm, TF.batch_norm):
        xs = x.clone().requires_grad_()
        w = torch.linspace(0.5, 1.5, 3, dtype=torch.float64, requires_grad=True)
        b = torch.linspace(-1, 1, 3, dtype=torch.float64, requires_grad=True)
        stats = [torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)]
        out = fn(xs, *stats, w, b, training=training, momentum=0.3)
        out.backward(torch.cos(out.detach()))
        results.append([out, xs.grad, w.grad, b.grad, *stats])
    for ours, torchs in zip(*results, strict=True):
        torch.testing.assert_close(ours, torchs)


def test_saved_bytes_counts_what_the_backward_keeps():
    x = torch.randn(64, 8, requires_grad=True)
    w, b = torch.ones(8, requires_grad=True), torch.zeros(8, requires_grad=True)
    x_bytes, per_channel = x.numel() * 4, 8 * 4
    # ours and PyTorch's keep x itself and per-channel vectors (the weight, the mean, 1/std)
    for fn in (bn.functional.batch_norm, TF.batch_norm):
        kept = hardware.saved_bytes(lambda *a, fn=fn: fn(*a, training=True), x, None, None, w, b)
        assert x_bytes <= kept <= x_bytes + 3 * per_channel
    # the readable forward left to autograd keeps x - mean and x_hat (and no x)
    readable = bn.functional.batch_norm_forward.__wrapped__
    kept = hardware.saved_bytes(lambda *a: readable(*a)[0], x, w, b)
    assert 2 * x_bytes <= kept <= 2 * x_bytes + 2 * per_channel


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator maps large blocks anew")
def test_page_faults_counts_first_touches_of_fresh_memory():
    assert hardware.page_faults(lambda: torch.ones(1 << 24), reps=2) > 0  # 64 MiB, mapped anew
    assert hardware.page_faults(lambda: None, reps=3) < 1


def test_reuse_freed_memory_stops_the_faults_of_fresh_tensors():
    # in a process of its own: the setting lasts for the rest of the process
    code = ("import torch; from bncourse.lab import hardware as h\n"
            "fresh = lambda: torch.ones(1 << 24)  # 64 MiB\n"
            "before = h.page_faults(fresh, reps=3)\n"
            "done = h.reuse_freed_memory()\n"
            "fresh(), fresh()  # the heap grows to hold it, once\n"
            "calls = sorted(h.page_faults(fresh, reps=1) for _ in range(5))\n"
            "print(before, calls[2], done)")  # the median call: the system may reclaim idle pages
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, done = out.stdout.split()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert done == "True"
        assert float(before) >= 32  # a fault for every page, 2 MiB at most, of the fresh tensor
        assert float(after) < 1  # its memory reused
    else:
        assert done == "False"


def test_describe_names_the_device_and_its_vector_code():
    line = hardware.describe("cpu")
    assert line.startswith("device: cpu, ") and torch.backends.cpu.get_cpu_capability() in line


def test_first_call_times_a_call_and_says_what_it_compiled():
    from torch._dynamo.utils import counters

    def graphs(miss, hit):  # what Inductor counts for each graph it compiles or loads
        counters["inductor"]["fxgraph_cache_miss"] += miss
        counters["inductor"]["fxgraph_cache_hit"] += hit

    assert hardware.first_call(lambda: None)[1] == "nothing compiled"
    assert hardware.first_call(lambda: graphs(0, 2))[1] == "loaded from Inductor's disk cache"
    seconds, how = hardware.first_call(lambda: graphs(1, 1))
    assert seconds >= 0 and how == "compiled"  # one graph compiled is a compilation


def cpp_for(var: str, stop: int, step: int) -> str:
    """A loop header as Inductor writes it in C++."""
    i64 = "static_cast<int64_t>"
    return f"for(int64_t {var}={i64}(0L); {var}<{i64}({stop}L); {var}+={i64}({step}L))"


def test_loop_nest_reads_inductors_loops():
    # two loop nests, the way Inductor writes the two stages of a sum: note the extra block
    code = "\n".join(["{", cpp_for("x0", 128, 1), "{", cpp_for("x1", 256, 16), "{", "{",
                      cpp_for("x2", 64, 1), "{", "}", "}", "}", "}", "}", "}",
                      "{", cpp_for("x0", 256, 16), "{", "{", cpp_for("x1", 128, 1), "{"])
    assert hardware.loop_nest(code) == [
        "for x0 in range(0, 128, 1)", "    for x1 in range(0, 256, 16)", "        for x2 in range(0, 64, 1)",
        "for x0 in range(0, 256, 16)", "    for x1 in range(0, 128, 1)",
    ]
    assert hardware.loop_nest("def triton_kernel(in_ptr0): ...") == []
