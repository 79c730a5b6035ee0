"""The compiled fast path: the same values as the eager kernels and PyTorch's.

Compiling takes tens of seconds on a small CPU, so every compiling test uses one input shape
(8200, 8): large enough for the two-stage batch sum (with a tail of rows), small enough to be quick;
the eval kernel for spatial dims gets a small (N, C, H, W).
"""

import pytest
import torch
import torch.nn.functional as TF

import bncourse as bn
from bncourse import compiled
from conftest import tolerances

SHAPE = (8200, 8)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, inside torch.compile


@pytest.mark.parametrize("shape", [(8, 3), (4096, 4), (4099, 4), (10, 2048)])
def test_batch_sum_is_the_sum_over_dim_0(shape):
    t = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(compiled.batch_sum(t), t.sum(0))


@pytest.mark.parametrize("shape", [(8, 3), (4096, 4), (4099, 4), (10, 2048), (5, 3, 4, 6), (3, 2, 7)])
def test_block_moments_are_the_two_pass_moments(shape):
    # blocks of rows (a tail of rows included) or planes, merged: the float64 two-pass values,
    # and float32 stays accurate far from zero
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1e4
    dims = [0, *range(2, x.dim())]
    mean, m2 = compiled.block_moments(x)
    torch.testing.assert_close(mean, x.mean(dims))
    torch.testing.assert_close(m2, (x - bn.functional.channel_view(x.mean(dims), x)).square().sum(dims))
    x32 = x.float()  # against the float64 moments of the same float32 values
    _, m2_of_x32 = compiled.block_moments(x32.double())
    assert bn.rel_error(compiled.block_moments(x32)[1].double(), m2_of_x32) <= 1e-4


def test_the_compiled_forward_reads_x_once_for_its_statistics():
    # two loop nests over the rows: the blocks' moments (two passes over a block in cache), the output
    x = torch.randn(SHAPE)
    code = compiled.generated_code(compiled.forward, x, torch.ones(SHAPE[1]), torch.zeros(SHAPE[1]), 1e-5)
    nests = "\n".join(bn.hardware.loop_nest(code)).split("\nfor ")
    rows = (f"range(0, {compiled.rows_per_block(*SHAPE)}, 1)", f"range(0, {SHAPE[0]}, 1)")
    assert sum(any(line.endswith(rows) for line in nest.splitlines()) for nest in nests) == 2


def test_compiler_is_found_here_and_a_missing_one_is_named(monkeypatch):
    assert compiled.available("cpu") is None
    monkeypatch.setenv("CXX", "no-such-compiler++")
    assert "no C++ compiler ('no-such-compiler++' is not on PATH)" in compiled.available("cpu")


def test_without_a_compiler_it_warns_and_runs_the_eager_kernels(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler++")
    compiled._warn_once.cache_clear()
    x = torch.randn(6, 3)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler.*running the eager kernels"):
        out = bn.functional.batch_norm(x, None, None, training=True, compiled=True)
    torch.testing.assert_close(out, bn.functional.batch_norm(x, None, None, training=True))


@pytest.fixture(params=["streaming", "inductor"])
def path(request, monkeypatch):
    """Float32 batches on the CPU run on bncourse.streaming's loops; "inductor" turns those off."""
    if request.param == "inductor":
        monkeypatch.setattr(compiled, "streams", lambda *tensors: False)
    return request.param


def test_compiled_train_and_eval_match_torch(device, path):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(SHAPE, generator=g) * 3 + 2).to(device)
    dout = torch.randn(SHAPE, generator=g).to(device)
    c = SHAPE[1]
    params = [(torch.rand(c, generator=g) + 0.5).to(device), torch.randn(c, generator=g).to(device)]
    results = []
    for fn, kw in ((bn.functional.batch_norm, {"compiled": True}), (TF.batch_norm, {})):
        xs, w, b = (t.clone().requires_grad_() for t in (x, *params))
        stats = [torch.zeros(c, device=device), torch.ones(c, device=device)]
        out = fn(xs, *stats, w, b, training=True, momentum=0.3, **kw)
        out.backward(dout)
        with torch.no_grad():
            evaluated = fn(x, *stats, w, b, training=False, **kw)
        results.append([out, xs.grad, w.grad, b.grad, *stats, evaluated])
    for ours, ref in zip(*results, strict=True):
        torch.testing.assert_close(ours, ref, **tolerances(torch.float32))


@pytest.mark.parametrize("affine", [True, False])
def test_compiled_eval_with_spatial_dims_matches_torch(affine, path):
    # (N, C, H, W) takes the other eval kernel (Inductor's): scale and shift computed inside it
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 5, 6, generator=g) * 3 + 2
    stats = [torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5]
    params = [torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g)] if affine else [None, None]
    ours = bn.functional.batch_norm(x, *stats, *params, training=False, compiled=True)
    torch.testing.assert_close(ours, TF.batch_norm(x, *stats, *params, training=False),
                               **tolerances(torch.float32))


def test_float32_batches_on_the_cpu_run_on_the_streaming_loops(monkeypatch):
    calls = []
    for name in ("channel_sums", "channel_affine"):
        loop = getattr(compiled.S, name)
        monkeypatch.setattr(compiled.S, name, lambda *a, _loop=loop, _name=name, **k: (
            calls.append(_name), _loop(*a, **k))[1])
    x = torch.randn(64, 8, requires_grad=True)
    bn.functional.batch_norm(x, torch.zeros(8), torch.ones(8), training=True, compiled=True).sum().backward()
    assert calls == ["channel_sums", "channel_affine"] * 2  # the forward's, then the backward's
    assert compiled.streams(x) and not compiled.streams(x.double()) and not compiled.streams(x.t())
    assert not compiled.streams(x, torch.ones(8, dtype=torch.float64))


def test_loops_that_do_not_build_warn_once_and_inductor_runs_instead(monkeypatch):
    def fails(name):
        raise RuntimeError(f"C++ compile error\n{name}.cpp: omp.h: No such file")

    monkeypatch.setattr(compiled.S, "_loop", fails)
    compiled.S.built.cache_clear()
    compiled._warn_loops_once.cache_clear()
    x = torch.randn(SHAPE, requires_grad=True)
    try:
        with pytest.warns(RuntimeWarning, match="did not build \\(RuntimeError: C\\+\\+ compile error\\)"):
            out = bn.functional.batch_norm(x, None, None, training=True, compiled=True)
        assert compiled.S.built() is not None and not compiled.streams(x.detach())
    finally:
        compiled.S.built.cache_clear()  # the loops build again for the tests after this one
    torch.testing.assert_close(out, bn.functional.batch_norm(x, None, None, training=True),
                               **tolerances(torch.float32))


def test_compiled_float32_variance_is_accurate_with_a_large_offset(path):
    g = torch.Generator().manual_seed(1)
    x64 = torch.randn(SHAPE, generator=g, dtype=torch.float64) + 1e4
    layer = bn.nn.BatchNorm1d(SHAPE[1], momentum=1.0, compiled=True)
    layer(x64.float())
    assert bn.rel_error(layer.running_var, x64.var(0, unbiased=True)) <= 1e-3
    assert repr(layer) == repr(torch.nn.BatchNorm1d(SHAPE[1], momentum=1.0)).replace(")", ", compiled=True)")


def test_generated_code_shows_the_mean_over_the_batch_in_two_stages(monkeypatch):
    x = torch.randn(SHAPE)
    loops = {two_stage: "\n".join(bn.hardware.loop_nest(
        compiled.generated_code(lambda t: t.mean(0), x, two_stage_sums=two_stage)))
        for two_stage in (False, True)}
    assert "range(0, 8200, 1)" in loops[False]  # one sweep down all the rows
    rows = compiled.BLOCK_ELEMENTS // SHAPE[1]  # blocks of rows, then the blocks
    assert "range(0, 8200, 1)" not in loops[True] and f"range(0, {rows}, 1)" in loops[True]
    monkeypatch.setenv("CXX", "no-such-compiler++")
    with pytest.raises(RuntimeError, match="cannot show compiled code: .*no C\\+\\+ compiler"):
        compiled.generated_code(lambda t: t.sum(0), x)


def test_generated_codes_give_the_forward_and_the_backward():
    x = torch.randn(SHAPE, requires_grad=True)
    w, b = torch.ones(SHAPE[1], requires_grad=True), torch.zeros(SHAPE[1], requires_grad=True)
    codes = compiled.generated_codes(lambda x, w, b: TF.batch_norm(x, None, None, w, b, training=True),
                                     x, w, b, two_stage_sums=False, grad=torch.randn(SHAPE))
    assert len(codes) == 2 and all(bn.hardware.loop_nest(code) for code in codes)
    assert x.grad is not None and w.grad is not None


def test_the_compiled_path_keeps_what_the_eager_one_keeps():
    # x and per-channel vectors (the weight, the mean, 1/std), as chapter 7 counts them
    x = torch.randn(SHAPE, requires_grad=True)
    w, b = torch.ones(SHAPE[1], requires_grad=True), torch.zeros(SHAPE[1], requires_grad=True)
    kept = bn.hardware.saved_bytes(
        lambda *a: bn.functional.batch_norm(*a, training=True, compiled=True), x, None, None, w, b)
    assert x.numel() * 4 <= kept <= x.numel() * 4 + 3 * SHAPE[1] * 4
