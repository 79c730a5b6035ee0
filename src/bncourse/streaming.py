"""Two loops written by hand in C++, for float32 batches on the CPU, where Inductor's loops fall short.

* :func:`channel_sums`: per-channel sums over the rows of an ``(N, C)`` batch. Inductor puts the
  loop of a reduction innermost, so its per-channel sum walks down the columns (a vector of
  channels, one row after another, a row's length apart); this loop streams the rows in memory
  order into accumulators of one row's size, as ATen's batch norm does.
* :func:`channel_affine`: a per-channel affine map of one or two tensors (the output of batch norm,
  its ``dx``). An output too large to stay in the cache is written with non-temporal stores: it is
  not read into the cache before it is written (write-allocate), which saves a third of the
  traffic of a map that reads one tensor.

The batch norm math stays in Python (:mod:`bncourse.compiled`); these are loops over memory. They
are built on first use by Inductor's C++ toolchain, with the vector width it picks
(``ATEN_CPU_CAPABILITY`` included), and kept in its disk cache: seconds, once per machine.
"""

import functools
from pathlib import Path

import torch

__all__ = ["built", "channel_affine", "channel_sums", "last_level_cache_bytes", "source", "stream_bytes"]

SOURCES = Path(__file__).parent / "csrc"
_ARGTYPES = {
    "channel_sums": ["const float*"] * 4 + ["double*"] + ["int64_t"] * 3,
    "channel_affine": ["const float*"] * 6 + ["float*"] + ["int64_t"] * 6,
}


def source(name: str) -> str:
    """The C++ source of the loop ``name``: ``"channel_sums"`` or ``"channel_affine"``."""
    if name not in _ARGTYPES:
        raise ValueError(f"expected one of {', '.join(_ARGTYPES)}, got {name!r}")
    return (SOURCES / f"{name}.cpp").read_text()


@functools.cache
def _loop(name: str):
    # Inductor's cache keys a build by its flags, the vector width among them: a build for one width
    # is not run under another
    from torch._inductor.codecache import CppPythonBindingsCodeCache

    return CppPythonBindingsCodeCache.load_pybinding(_ARGTYPES[name], source(name))


@functools.cache
def built() -> str | None:
    """``None`` once both loops are built (or loaded from the cache) here, else why they could not be."""
    try:
        for name in _ARGTYPES:
            _loop(name)
    except Exception as error:  # a compiler that cannot build them (no OpenMP, say): the caller falls back
        first = (str(error).strip().splitlines() or [""])[0]
        return f"{type(error).__name__}: {first}"
    return None


def _check(t: torch.Tensor, name: str, shape: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor, got {type(t).__name__}")
    if not t.is_cpu or t.dtype != torch.float32 or not t.is_contiguous():
        raise ValueError(f"expected {name} as a contiguous float32 tensor on the CPU, got "
                         f"{t.dtype} on {t.device}{'' if t.is_contiguous() else ', not contiguous'}")
    if t.shape != shape:
        raise ValueError(f"expected {name} of shape {shape}, got {tuple(t.shape)}")


def channel_sums(u: torch.Tensor, v: torch.Tensor, mu: torch.Tensor, mv: torch.Tensor):
    """``(sum(u - mu), sum((u - mu) * (v - mv)))`` over the rows of ``(N, C)`` batches, per channel.

    ``mu`` and ``mv`` hold one value per channel. Returns two float64 tensors of shape ``(C,)``:
    each thread sums its rows in float32 in chunks of 64 rows, and adds the chunks in float64.
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 2:
        raise ValueError(f"expected u as an (N, C) tensor, got {getattr(u, 'shape', type(u).__name__)}")
    n, c = u.shape
    _check(u, "u", (n, c))
    _check(v, "v", (n, c))
    _check(mu, "mu", (c,))
    _check(mv, "mv", (c,))
    out = torch.empty(2, c, dtype=torch.float64)
    _loop("channel_sums")(u, v, mu, mv, out, n, c, torch.get_num_threads())
    return out[0], out[1]


@functools.cache
def stream_bytes() -> int:
    """Output size from which :func:`channel_affine` writes past the cache: a quarter of the last level.

    Measured beside PyTorch's kernel on a 32 MiB cache: a 4 MiB output was written faster through the
    cache (the next reader finds it there), a 16 MiB one past it. The size is Linux's account of the
    first CPU's caches; elsewhere 32 MiB is assumed.
    """
    return (last_level_cache_bytes() or 32 << 20) // 4


def last_level_cache_bytes(caches: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """The size of the first CPU's last-level cache as Linux tells it (``None`` where it does not)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = {}
    for index in caches.glob("index*"):
        try:
            level, size = (index / "level").read_text().strip(), (index / "size").read_text().strip()
            sizes[int(level)] = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        except (OSError, ValueError):
            continue
    return sizes[max(sizes)] if sizes else None


def channel_affine(u, a, q, v=None, b=None, m=None, *, stream: bool | None = None) -> torch.Tensor:
    """``a * u + q``, or with ``v``: ``a * u + (b * (v - m) + q)``, per channel of ``(N, C, *)`` batches.

    ``a``, ``q`` (and ``b``, ``m``) hold one value per channel; ``v`` has ``u``'s shape. The output
    is new. ``stream=True`` writes it with non-temporal stores where the CPU has them (AVX2,
    AVX-512); the default does so from :func:`stream_bytes` on.
    """
    if not isinstance(u, torch.Tensor) or u.dim() < 2:
        raise ValueError(f"expected u as an (N, C) or (N, C, *) tensor, got "
                         f"{getattr(u, 'shape', type(u).__name__)}")
    shape, c = tuple(u.shape), u.shape[1]
    _check(u, "u", shape)
    _check(a, "a", (c,))
    _check(q, "q", (c,))
    two = v is not None
    if two:
        _check(v, "v", shape)
        _check(b, "b", (c,))
        _check(m, "m", (c,))
    elif b is not None or m is not None:
        raise ValueError("b and m scale the second input v: pass v with them, or neither")
    out = torch.empty_like(u)
    if u.numel():
        n = u.shape[0]
        plane = u.numel() // (n * c)
        second = (v, b, m) if two else (u, a, a)  # not read when not two
        if stream is None:
            stream = out.nbytes >= stream_bytes()
        _loop("channel_affine")(u, second[0], a, second[1], second[2], q, out, n, c, plane, int(two),
                                int(stream), torch.get_num_threads())
    return out
