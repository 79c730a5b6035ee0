"""Chapter 7's measuring tools (their numbers are printed by the chapter, never asserted here)."""

import torch
import torch.nn.functional as TF

import bncourse as bn
from bncourse import bench, hardware


def test_roofs_are_positive_numbers():
    assert hardware.copy_bandwidth(1 << 16, reps=3) > 0
    assert hardware.matmul_flops(64, reps=3) > 0


def test_kernel_steps_compute_the_gradients():
    inputs = bench.make_inputs((16, 3), torch.device("cpu"))
    for kernels in (bn.functional, bn.tuned):
        dx, dgamma, dbeta = hardware.kernel_step(kernels, inputs)()
        torch.testing.assert_close(dbeta, inputs["dy"].sum(0))


def test_saved_bytes_counts_what_the_backward_keeps_beyond_the_inputs():
    x = torch.randn(64, 8, requires_grad=True)
    w, b = torch.ones(8, requires_grad=True), torch.zeros(8, requires_grad=True)
    per_channel = 8 * 4
    # ours and PyTorch's keep x (an input) and per-channel statistics only
    assert hardware.saved_bytes(lambda *a: bn.functional.batch_norm(*a, training=True), x, None, None, w, b) \
        <= 3 * per_channel
    assert hardware.saved_bytes(lambda *a: TF.batch_norm(*a, training=True), x, None, None, w, b) \
        <= 3 * per_channel
    # the readable forward left to autograd keeps input-sized intermediates
    readable = bn.functional.batch_norm_forward.__wrapped__
    assert hardware.saved_bytes(lambda *a: readable(*a)[0], x, w, b) >= 2 * x.numel() * 4


def test_loop_nest_reads_inductors_loops():
    code = """
    for(int64_t x0=static_cast<int64_t>(0L); x0<static_cast<int64_t>(256L); x0+=static_cast<int64_t>(16L))
    {
        for(int64_t x1=static_cast<int64_t>(0L); x1<static_cast<int64_t>(8192L); x1+=static_cast<int64_t>(1L))
    """
    assert hardware.loop_nest(code) == ["for x0 in range(0, 256, 16)", "    for x1 in range(0, 8192, 1)"]
