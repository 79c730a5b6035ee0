"""The hand-written loops of bncourse.streaming: against float64 references, on awkward shapes
(channels that are not a whole number of vectors, rows whose start is not aligned for the
non-temporal stores, planes of odd length), with clear errors for inputs they do not take."""

import os
import subprocess
import sys

import pytest
import torch

from bncourse import compiled
from bncourse import streaming as S

pytestmark = pytest.mark.skipif(compiled.available("cpu") is not None, reason="no C++ compiler")


def float64_sums(u, v, mu, mv):
    du = u.double() - mu.double()
    return du.sum(0), (du * (v.double() - mv.double())).sum(0)


@pytest.mark.parametrize("shape", [(16384, 256), (130, 100), (1, 17), (5, 1), (67, 3)])
def test_channel_sums_match_float64(shape):
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(shape, generator=g), torch.randn(shape, generator=g) * 3 + 1e4
    mu, mv = torch.randn(shape[1], generator=g), v[0].clone()
    for args in ((u, v, mu, mv), (v, v, mv, mv)):  # the second: sums of squares, read once
        for got, want in zip(S.channel_sums(*args), float64_sums(*args), strict=True):
            assert got.dtype == torch.float64
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item())


def test_channel_sums_of_a_shifted_batch_give_its_variance_far_from_zero():
    # the variance's sums, as the forward takes them: x - x[0] and its square, with a mean of 1e4
    x64 = torch.randn(8192, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 1e4
    x = x64.float()
    s1, s2 = S.channel_sums(x, x, x[0], x[0])
    var = (s2 - s1 * s1 / x.shape[0]) / x.shape[0]
    torch.testing.assert_close(var, x.double().var(0, unbiased=False), rtol=1e-5, atol=0)


@pytest.mark.parametrize("shape", [(64, 256), (33, 100), (7, 3), (3, 5, 7, 9), (2, 4, 55, 56), (4, 3, 1, 1)])
def test_channel_affine_matches_float64(shape):
    g = torch.Generator().manual_seed(2)
    u, v = torch.randn(shape, generator=g), torch.randn(shape, generator=g) + 50
    a, b, m, q = (torch.randn(shape[1], generator=g) for _ in range(4))
    per_channel = (1, -1) + (1,) * (len(shape) - 2)
    a64, b64, m64, q64 = (t.double().view(per_channel) for t in (a, b, m, q))
    for stream in (False, True):  # through the cache, and past it
        torch.testing.assert_close(S.channel_affine(u, a, q, stream=stream), (u.double() * a64 + q64).float())
        want = u.double() * a64 + b64 * (v.double() - m64) + q64
        torch.testing.assert_close(S.channel_affine(u, a, q, v=v, b=b, m=m, stream=stream), want.float())


def test_the_last_level_cache_is_read_from_linux_accounts(tmp_path):
    for index, (level, size) in enumerate([("1", "32K"), ("2", "1024K"), ("3", "32768K")]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "level").write_text(level + "\n")
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    assert S.last_level_cache_bytes(tmp_path) == 32 << 20
    assert S.last_level_cache_bytes(tmp_path / "absent") is None


def test_outputs_too_large_for_the_cache_are_written_past_it(monkeypatch):
    assert S.stream_bytes() >= 1 << 16  # a quarter of a last-level cache
    seen = []
    loop = S._loop("channel_affine")
    monkeypatch.setattr(S, "_loop", lambda name: lambda *args: (seen.append(args[-2]), loop(*args)))
    for rows in (S.stream_bytes() // 1024 - 1, S.stream_bytes() // 1024):  # rows of 256 floats
        S.channel_affine(torch.ones(rows, 256), torch.ones(256), torch.zeros(256))
    assert seen == [0, 1]


def test_channel_affine_keeps_infinities_where_the_second_input_is_absent():
    u = torch.tensor([[float("inf"), -1.0], [2.0, 3.0]])
    out = S.channel_affine(u, torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.0]))
    assert out[0, 0] == float("inf") and out.tolist()[1] == [5.0, 3.0]


def test_empty_batches_give_empty_results():
    u = torch.empty(0, 4)
    assert S.channel_affine(u, torch.ones(4), torch.zeros(4)).shape == (0, 4)
    s1, s2 = S.channel_sums(u, u, torch.zeros(4), torch.zeros(4))
    assert s1.tolist() == [0.0] * 4 and s2.tolist() == [0.0] * 4


@pytest.mark.parametrize("bad, match", [
    (lambda x: x.double(), "contiguous float32 tensor on the CPU, got torch.float64"),
    (lambda x: x.t(), "not contiguous"),
    (lambda x: x[:, :2], "not contiguous"),
])
def test_inputs_it_cannot_take_are_named(bad, match):
    x, c = torch.randn(6, 4), torch.zeros(4)
    with pytest.raises(ValueError, match=match):
        S.channel_affine(bad(x), c, c)
    with pytest.raises(ValueError, match=match):
        S.channel_sums(x, bad(x), c, c) if bad(x).shape == x.shape else S.channel_sums(bad(x), bad(x), c, c)


def test_shapes_that_do_not_fit_are_named():
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"expected a of shape \(4,\), got \(3,\)"):
        S.channel_affine(x, torch.ones(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"expected u as an \(N, C\) tensor"):
        S.channel_sums(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="pass v with them"):
        S.channel_affine(x, torch.ones(4), torch.zeros(4), b=torch.ones(4))
    with pytest.raises(ValueError, match="one of channel_sums, channel_affine"):
        S.source("channel_mean")


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_the_loops_give_the_same_values_built_for_another_vector_width(capability):
    # a fresh process: ATEN_CPU_CAPABILITY is read at start, and picks the build (scalar loops
    # only for "default", 256-bit vectors and their non-temporal stores for "avx2")
    code = """
import torch
from bncourse import streaming as S
g = torch.Generator().manual_seed(3)
u, v = torch.randn(37, 21, generator=g), torch.randn(37, 21, generator=g) + 7
a, b, m, q = (torch.randn(21, generator=g) for _ in range(4))
s1, s2 = S.channel_sums(u, v, m, q)
d = u.double() - m.double()
torch.testing.assert_close(s1, d.sum(0), rtol=1e-5, atol=1e-5)  # float32 within chunks
torch.testing.assert_close(s2, (d * (v.double() - q.double())).sum(0), rtol=1e-5, atol=1e-5)
want = u.double() * a.double() + b.double() * (v.double() - m.double()) + q.double()
for stream in (False, True):
    torch.testing.assert_close(S.channel_affine(u, a, q, v=v, b=b, m=m, stream=stream), want.float())
planes = torch.randn(3, 21, 5, 7, generator=g)
want = planes * a.view(1, -1, 1, 1) + q.view(1, -1, 1, 1)
for stream in (False, True):
    torch.testing.assert_close(S.channel_affine(planes, a, q, stream=stream), want)
"""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
