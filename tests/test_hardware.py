"""Chapter 7's measuring tools (their numbers are printed by the chapter, never asserted here)."""

import sys

import pytest
import torch
import torch.nn.functional as TF

import bncourse as bn
from bncourse.lab import bench, hardware


def test_roofs_are_positive_numbers():
    assert hardware.copy_bandwidth(1 << 16, reps=3) > 0
    assert all(roof > 0 for roof in hardware.roofs(1 << 16, 64, reps=3))


def test_kernel_steps_compute_the_gradients():
    inputs = bench.make_inputs((16, 3), torch.device("cpu"))
    for kernels in (bn.functional, bn.tuned):
        dx, dgamma, dbeta = hardware.kernel_step(kernels, inputs)()
        torch.testing.assert_close(dbeta, inputs["dy"].sum(0))


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


def test_describe_names_the_device_and_its_vector_code():
    line = hardware.describe("cpu")
    assert line.startswith("device: cpu, ") and torch.backends.cpu.get_cpu_capability() in line


def test_first_call_times_a_call_and_says_if_a_cache_served_it():
    seconds, cached = hardware.first_call(lambda: None)
    assert seconds >= 0 and cached is False


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
