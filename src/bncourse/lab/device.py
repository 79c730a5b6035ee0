"""Where the course's tensors live, and how runs are made reproducible."""

import os
import random

import numpy as np
import torch

_DEVICES = ("cpu", "cuda", "mps")


def default_device() -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU.

    Set the environment variable ``BNCOURSE_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) to choose.
    """
    choice = os.environ.get("BNCOURSE_DEVICE", "").strip()
    if choice:
        if choice.split(":")[0] not in _DEVICES:
            raise ValueError(
                f"BNCOURSE_DEVICE must be one of {', '.join(_DEVICES)} (optionally with ':index'), "
                f"got {choice!r}"
            )
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_devices() -> list[torch.device]:
    """Every device kind this machine can run the kernels on (the CPU first)."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append(torch.device("mps"))
    return devices


def seed_offset() -> int:
    """The shift ``BNCOURSE_SEED_OFFSET`` adds to every seed the course sets (default 0).

    ``make robust`` runs every notebook under other offsets: a claim that holds only for the
    stored seeds fails there, as it would on a learner's machine, whose rounding is another draw.
    """
    value = os.environ.get("BNCOURSE_SEED_OFFSET", "0").strip() or "0"
    try:
        offset = int(value)
    except ValueError:
        raise ValueError(f"BNCOURSE_SEED_OFFSET must be a non-negative int, got {value!r}") from None
    if offset < 0:
        raise ValueError(f"BNCOURSE_SEED_OFFSET must be a non-negative int, got {offset}")
    return offset


def shifted(seed: int) -> int:
    """``seed`` plus :func:`seed_offset`: the seed the course actually uses for ``seed``."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return seed + seed_offset()


def generator(seed: int, device=None) -> torch.Generator:
    """A ``torch.Generator`` seeded with ``shifted(seed)`` (on ``device``, the CPU by default)."""
    return torch.Generator(device=device or "cpu").manual_seed(shifted(seed))


def rng(seed: int) -> np.random.Generator:
    """A NumPy generator seeded with ``shifted(seed)``."""
    return np.random.default_rng(shifted(seed))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and every GPU) with ``shifted(seed)``; returns a seeded
    CPU generator."""
    seed = shifted(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS
    return torch.Generator().manual_seed(seed)


def setup(seed: int = 0, threads: int | None = 1) -> torch.device:
    """What every chapter runs first: seed everything, set the CPU threads, style the figures.

    ``threads=1`` suits the course's small models, which run fastest on one thread and are then
    unaffected by other jobs; ``None`` keeps PyTorch's default (all cores). Figures are drawn in the
    book's style at twice the resolution (sharp on high-density screens). Returns
    :func:`default_device`.
    """
    from .plot import use_style

    if threads is not None:
        torch.set_num_threads(threads)
    seed_everything(seed)
    use_style(retina=True)
    return default_device()
