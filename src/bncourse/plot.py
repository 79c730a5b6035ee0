"""Matplotlib helpers: one consistent style for every figure in the book."""

import matplotlib as mpl
import matplotlib.pyplot as plt

# One colour per role, the same in every chapter.
COLORS = {
    "plain": "#d1495b",  # without batch norm
    "bn": "#00798c",  # with batch norm
    "torch": "#edae49",  # PyTorch's reference
    "ours": "#00798c",
    "accent": "#30638e",
    "grey": "#8d99ae",
}


def use_style() -> None:
    """Apply the book's style to matplotlib (called on import of bncourse)."""
    mpl.rcParams.update({
        "figure.figsize": (6.4, 3.8),
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "figure.constrained_layout.use": True,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.titlesize": 11,
        "axes.titleweight": "bold",
        "axes.labelsize": 10,
        "legend.frameon": False,
        "lines.linewidth": 1.8,
    })


def subplots(ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.4, **kw):
    """``plt.subplots`` sized per panel, so multi-panel figures keep readable panels."""
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)
