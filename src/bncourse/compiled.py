"""The fast path: the readable kernels of :mod:`bncourse.kernels`, compiled by ``torch.compile``.

Inductor, PyTorch's compiler, fuses each kernel into loops over memory: C++ with OpenMP on the CPU
(it needs a C++ compiler, ``g++`` or ``clang++``), Triton on CUDA. The functions compiled are
:func:`bncourse.kernels.batch_norm_backward_fused`, :func:`~bncourse.kernels.scale_shift` and
:func:`~bncourse.kernels.batch_norm_eval` (eval) themselves, and the readable forward with its
statistics taken another way: the same math, the same two-pass variance, in fewer sweeps over
memory.

Two things change. *How a sum runs*: Inductor's loop for the per-channel sum of an ``(N, C)`` tensor
over dim 0 walks down the columns, 16 channels at a time, sweeping the whole tensor ``C / 16`` times
with a stride of one row (read it with ``TORCH_LOGS=output_code``). :func:`batch_sum` sums blocks of
rows first, whose sweeps stay in cache, then the blocks; it replaces ``sum``/``mean`` over dim 0 of
2D tensors while Inductor lowers the kernels. *Where the variance's two passes run*: the forward
(:func:`forward`) takes them within blocks that stay in cache and merges the blocks' moments
(:func:`block_moments`), so its statistics read ``x`` once. Compiling takes seconds to a minute,
once per function and input shape (a second shape compiles once more, for every size); Inductor
also keeps its output on disk, so a new process reuses it.

Float32 batches on the CPU run elsewhere (:func:`streams`): an ``(N, C)`` batch trains on the two
loops of :mod:`bncourse.streaming`, written in C++ by hand (:func:`forward_rows`,
:func:`backward_rows`), and every such batch evaluates on its affine map. Inductor's per-channel
sum of an ``(N, C)`` batch still walks down columns, blocks or not; the hand-written loop streams
the rows, and large outputs are written past the cache. Measured with
``python -m bncourse.lab.bench``.
"""

import functools
import os
import shutil
import sys
import warnings

import torch

from . import kernels as F
from . import streaming as S
from .tuned import batch_norm_backward_fused, batch_norm_forward

__all__ = ["available", "backward", "backward_rows", "batch_norm_eval", "batch_norm_train", "batch_sum",
           "block_moments", "block_rows", "compile_kernel", "forward", "forward_rows", "generated_code",
           "generated_codes", "rows_per_block", "streams"]

aten = torch.ops.aten
BLOCK_ELEMENTS = 1 << 14  # a block of rows of batch_sum: 64 KiB of float32, which stays in cache


def block_rows(channels: int) -> int:
    """Rows in a block of :func:`batch_sum` and :func:`block_moments`: about ``BLOCK_ELEMENTS`` values."""
    return max(2, BLOCK_ELEMENTS // channels)


def rows_per_block(n: int, channels: int) -> int:
    """Rows in a block of :func:`block_moments`: :func:`block_rows`, or somewhat fewer that divide ``n``.

    With no rows left over, Inductor fuses a block's two passes into one loop nest; a tail of rows
    keeps the result exact but costs a second sweep.
    """
    most = block_rows(channels)
    return next((rows for rows in range(most, most // 4, -1) if n % rows == 0), most)


def batch_sum(t: torch.Tensor) -> torch.Tensor:
    """``t.sum(0)`` for a 2D ``(N, C)`` tensor, as a sum of sums over blocks of rows."""
    n, c = t.shape
    rows = block_rows(c)
    blocks = n // rows
    total = t[: blocks * rows].view(blocks, rows, c).sum(1).sum(0)
    return total + t[blocks * rows :].sum(0) if n % rows else total


def _split_reduction(op, default):
    def decomposition(t, dims, keepdim=False, *, dtype=None):
        if t.dim() == 2 and list(dims) in ([0], [-2]) and not keepdim and dtype is None \
                and t.shape[0] >= 4 * block_rows(t.shape[1]):
            total = batch_sum(t)
            return total / t.shape[0] if op is aten.mean.dim else total
        return default(t, dims, keepdim, dtype=dtype) if default else NotImplemented

    return decomposition


def _lower_with_batch_sums(gm, example_inputs):
    """Inductor, as ``torch.compile`` runs it, with ``sum``/``mean`` over dim 0 of 2D tensors lowered
    by :func:`batch_sum` and the vector width of :func:`compile_kernel`: this module's backend.

    It runs only while compiling, so the compiled kernels' calls pay nothing for it. The
    decompositions are put into Inductor's own table only meanwhile: other compiled code is not
    touched. Inductor's disk cache does not see the table, so a tag in the cache key tells its
    entries from those of the same graph lowered without them.
    """
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table

    table = select_decomp_table()
    saved = {op: table.get(op) for op in (aten.sum.dim_IntList, aten.mean.dim)}
    table.update({op: _split_reduction(op, default) for op, default in saved.items()})
    tag = "+".join(filter(None, [torch.compiler.config.cache_key_tag, "bncourse.batch_sum"]))
    try:
        with torch.compiler.config.patch(cache_key_tag=tag):
            return compile_fx(gm, example_inputs, config_patches=_vector_width())
    finally:
        for op, default in saved.items():
            if default is None:
                del table[op]
            else:
                table[op] = default


def available(device: torch.device | str = "cpu") -> str | None:
    """``None`` if ``torch.compile`` can build kernels for ``device`` here, else the reason why not."""
    return _available(torch.device(device).type, os.environ.get("CXX"))


@functools.cache
def _available(device_type: str, cxx: str | None) -> str | None:
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support Python {sys.version_info.major}.{sys.version_info.minor}"
    if device_type == "cpu":
        cxx = cxx or ("clang++" if sys.platform == "darwin" else "g++")
        if shutil.which(cxx) is None:
            return f"Inductor builds C++ for the CPU and found no C++ compiler ({cxx!r} is not on PATH)"
    elif device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Inductor writes Triton kernels for CUDA and the triton package is not installed"
    else:
        return f"this package compiles kernels for the CPU and CUDA, not for {device_type!r}"
    return None


def compile_kernel(fn):
    """``torch.compile(fn)`` with the C++ vector width stated, as this module compiles its kernels.

    (Its kernels also lower sums over the batch with :func:`batch_sum`.) Compile other functions
    with it too where they run beside these kernels and under other
    ``ATEN_CPU_CAPABILITY`` settings (the benchmark's ``torch.compile`` of PyTorch's batch norm):
    the same code, with a cache entry that cannot be mistaken for another width's.
    """
    return torch.compile(fn, options=_vector_width())


def _vector_width() -> dict[str, int]:
    # The vector width of the C++ code, stated: Inductor's disk cache does not tell apart code written
    # for AVX-512 from code for AVX2 (ATEN_CPU_CAPABILITY=avx2), and reusing one under the other skips
    # half the channels. A stated width is part of the cache key.
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    isa = pick_vec_isa()
    return {"cpp.simdlen": isa.bit_width() if isa else 1}


def _compile_with_batch_sums(fn):
    """``torch.compile(fn)`` on this module's backend (:func:`batch_sum` for sums over the batch)."""
    return torch.compile(fn, backend=_lower_with_batch_sums)


_compiled = functools.cache(_compile_with_batch_sums)


def generated_codes(fn, *args, two_stage_sums: bool = True, grad: torch.Tensor | None = None) -> list[str]:
    """The code Inductor writes for ``fn(*args)``, compiled as this module compiles its kernels.

    With ``grad``, the output's backward runs too (``out.backward(grad)``), and the backward's code
    follows the forward's. ``two_stage_sums=False`` leaves Inductor's own lowering of sums over dim 0
    (no :func:`batch_sum`). Compiling resets ``torch.compile``'s in-memory cache; the kernels compiled
    before are loaded again from Inductor's disk cache on their next call.
    """
    from torch._inductor.utils import run_and_get_code

    reason = available(args[0].device)
    if reason is not None:
        raise RuntimeError(f"cannot show compiled code: {reason}")
    compiled_fn = _compile_with_batch_sums(fn) if two_stage_sums else compile_kernel(fn)

    def call():
        out = compiled_fn(*args)
        if grad is not None:
            out.backward(grad)

    _, codes = run_and_get_code(call)
    return codes


def generated_code(fn, *args, two_stage_sums: bool = True) -> str:
    """The code Inductor writes for ``fn(*args)`` (its forward): :func:`generated_codes`' first."""
    return generated_codes(fn, *args, two_stage_sums=two_stage_sums)[0]


def block_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(mean, M2)`` of ``x``, ``M2 = sum((x - mean)**2)``, in one sweep over memory.

    The two-pass variance is taken within blocks small enough to stay in cache between its passes
    (:func:`rows_per_block` rows of an ``(N, C)`` input; one plane of an ``(N, C, *)`` input, per
    example), and the blocks' moments are merged with Chan's formula
    (:func:`bncourse.kernels.merge_moments`, the merge of SyncBatchNorm's shards). The values are
    first shifted by the first example's (exact in floating point for values near each other), so
    that the blocks' means, which the merge subtracts, keep their digits far from zero.
    """
    shift = x[0].reshape(x.shape[1], -1)[:, 0]
    mean, m2 = _block_moments(x - F.channel_view(shift, x))
    return mean + shift, m2


def _block_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, c = x.shape[0], x.shape[1]
    if x.dim() > 2:
        planes = x.reshape(n, c, -1)
        means = planes.mean(2)
        m2s = (planes - means.unsqueeze(2)).square().sum(2)
        return F.merge_moments([planes.shape[2]] * n, means, m2s)[1:]
    rows = rows_per_block(n, c)
    blocks = n // rows
    head = x[: blocks * rows].view(blocks, rows, c)
    means = head.mean(1)
    m2s = (head - means.unsqueeze(1)).square().sum(1)
    if n % rows:  # the rows after the last whole block, each a block of one (mean itself, M2 0)
        tail = x[blocks * rows :]
        means, m2s = torch.cat([means, tail]), torch.cat([m2s, torch.zeros_like(tail)])
    return F.merge_moments([rows] * blocks + [1] * (n % rows), means, m2s)[1:]


def streams(x: torch.Tensor, *channel_vectors: torch.Tensor | None) -> bool:
    """Whether :mod:`bncourse.streaming`'s loops run batch norm on ``x``: float32 on the CPU, contiguous.

    ``channel_vectors`` (weight, bias, running statistics; ``None`` for absent) must be float32 too.
    Where the loops do not build, it warns once and says no: Inductor's code runs instead.
    """
    tensors = [x, *(v for v in channel_vectors if v is not None)]
    if not (all(t.is_cpu and t.dtype == torch.float32 for t in tensors) and x.is_contiguous()
            and _available("cpu", os.environ.get("CXX")) is None):
        return False
    reason = S.built()
    if reason is not None:
        _warn_loops_once(reason)
    return reason is None


@functools.cache
def _warn_loops_once(reason: str) -> None:
    warnings.warn(f"compiled=True: the loops of bncourse.streaming did not build ({reason}); running "
                  "Inductor's code instead (same results)", RuntimeWarning, stacklevel=5)


def forward_rows(x, gamma, beta, eps):
    """The training-mode forward of an ``(N, C)`` batch on :mod:`bncourse.streaming`'s loops.

    One sweep over ``x`` for the statistics: sums of ``x - x[0]`` and of its square, row by row,
    whose difference is the variance's (shifted by the first row, as :func:`block_moments` is);
    one sweep for the output (:func:`bncourse.streaming.channel_affine`). ``(out, mean, var,
    inv_std)``.
    """
    n, shift = x.shape[0], x[0]
    s1, s2 = S.channel_sums(x, x, shift, shift)  # sum(x - shift), sum((x - shift)**2), in float64
    shifted_mean = s1 / n
    var = torch.addcmul(s2, s1, shifted_mean, value=-1).clamp_min_(0).div_(n).float()  # M2 / n
    mean = shifted_mean.add_(shift).float()
    inv_std = var.add(eps).rsqrt_()
    scale, offset = F.eval_scale_shift(mean, var, gamma, beta, eps)
    return S.channel_affine(x, scale, offset), mean, var, inv_std


def backward_rows(dout, x, mean, inv_std, gamma):
    """The closed-form backward of an ``(N, C)`` batch on :mod:`bncourse.streaming`'s loops.

    One sweep over ``dout`` and ``x`` for ``dbeta = sum(dout)`` and ``sum(dout * (x - mean))``, one
    for ``dx = k * (dout - dbeta / N - x_hat * dgamma / N)`` with ``k = gamma * inv_std``, written
    as ``k * dout + p * (x - mean) + q``. ``(dx, dgamma, dbeta)``.
    """
    n = x.shape[0]
    sum_dout, sum_dout_centered = S.channel_sums(dout, x, torch.zeros_like(mean), mean)
    dbeta, dgamma = sum_dout.float(), sum_dout_centered.float() * inv_std
    k = inv_std if gamma is None else gamma * inv_std
    p, q = (k * inv_std).mul_(dgamma).div_(-n), (k * dbeta).div_(-n)
    dx = S.channel_affine(dout, k, q, v=x, b=p, m=mean)
    return dx, dgamma, dbeta


def forward(x, gamma, beta, eps):
    """The training-mode forward as this module compiles it: ``(out, mean, var, inv_std)``.

    The readable forward's math, with the statistics from :func:`block_moments` (one sweep over
    ``x`` where the readable kernel takes two); the output is a second sweep.
    """
    mean, m2 = block_moments(x)
    var = m2 / (x.numel() // x.shape[1])
    inv_std = torch.rsqrt(var + eps)
    x_hat = (x - F.channel_view(mean, x)) * F.channel_view(inv_std, x)
    return F.affine(x_hat, gamma, beta), mean, var, inv_std


def backward(dout, x, mean, inv_std, gamma, eps):
    """The closed-form backward as this module compiles it: ``(dx, dgamma, dbeta)``."""
    cache = F.BatchNormCache(x, mean, None, inv_std, gamma, eps)
    return F.batch_norm_backward_fused(dout, cache)


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(f"compiled=True: {reason}; running the eager kernels instead (same results, slower)",
                  RuntimeWarning, stacklevel=4)


def run(kernel, eager, device, *args):
    """``kernel(*args)`` compiled, or ``eager(*args)`` with one warning where no compiler is here."""
    reason = available(device)
    if reason is None:
        return _compiled(kernel)(*args)
    _warn_once(reason)
    return eager(*args)


class BatchNormCompiledFunction(torch.autograd.Function):
    """Training-mode batch norm on the compiled readable kernels; as ``BatchNormFunction``."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        def eager(x, weight, bias, eps):
            out, cache = batch_norm_forward(x, weight, bias, eps)
            return out, cache.mean, cache.var, cache.inv_std

        if x.dim() == 2 and streams(x, weight, bias):
            out, mean, var, inv_std = forward_rows(x, weight, bias, eps)
        else:
            out, mean, var, inv_std = run(forward, eager, x.device, x, weight, bias, eps)
        ctx.save_for_backward(x, mean, inv_std, weight)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, _dmean, _dvar):
        def eager(dout, x, mean, inv_std, weight, eps):
            return batch_norm_backward_fused(dout, F.BatchNormCache(x, mean, None, inv_std, weight, eps))

        x, mean, inv_std, weight = ctx.saved_tensors
        dout = dout.contiguous()
        if x.dim() == 2 and streams(dout, weight):
            dx, dgamma, dbeta = backward_rows(dout, x, mean, inv_std, weight)
        else:
            dx, dgamma, dbeta = run(backward, eager, x.device, dout, x, mean, inv_std, weight, ctx.eps)
        need_x, need_weight, need_bias, _ = ctx.needs_input_grad
        return dx if need_x else None, dgamma if need_weight else None, dbeta if need_bias else None, None


def batch_norm_train(x, weight, bias, eps):
    """``(out, mean, var)`` of training-mode batch norm, differentiable, on the compiled kernels."""
    return BatchNormCompiledFunction.apply(x, weight, bias, eps)


def batch_norm_eval(x, running_mean, running_var, weight, bias, eps):
    """:func:`bncourse.functional.batch_norm_eval` with its one pass over ``x`` compiled.

    Float32 on the CPU (:func:`streams`), the pass is :func:`bncourse.streaming.channel_affine`.
    Elsewhere, for ``(N, C)`` the per-channel scale and shift are computed first, eagerly: inside
    the kernel they would be recomputed for every row. With spatial dims a channel's scale and shift
    serve a whole plane, so the kernel computes them itself and the separate small launches are
    saved.
    """
    if streams(x, running_mean, running_var, weight, bias):
        return S.channel_affine(x, *F.eval_scale_shift(running_mean, running_var, weight, bias, eps))
    if x.dim() > 2:
        args = (x, running_mean, running_var, weight, bias, eps)
        return run(F.batch_norm_eval, F.batch_norm_eval, x.device, *args)
    scale, shift = F.eval_scale_shift(running_mean, running_var, weight, bias, eps)
    return run(F.scale_shift, F.scale_shift, x.device, x, scale, shift)
