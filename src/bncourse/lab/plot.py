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


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def use_style(retina: bool = False) -> None:
    """Apply the book's style to matplotlib (called on import of bncourse).

    ``retina=True`` also makes a notebook's inline figures twice the resolution at the same size.
    """
    if retina and _in_ipython():
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("retina")
    mpl.rcParams.update({
        "figure.figsize": (6.4, 3.8),
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "figure.constrained_layout.use": True,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.titleweight": "bold",
        "axes.labelsize": 10,
        "xtick.labelsize": 9,
        "ytick.labelsize": 9,
        "legend.fontsize": 9,
        "legend.frameon": False,
        "lines.linewidth": 1.8,
    })


MAX_COLUMNS = 2  # the book's text column is about 750 px wide: three panels would shrink the text


def subplots(ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.4, **kw):
    """``plt.subplots`` sized per panel, at most two panels side by side so text stays legible."""
    if ncols > MAX_COLUMNS:
        raise ValueError(
            f"expected at most {MAX_COLUMNS} panels side by side (the book's column is about 750 px), "
            f"got ncols={ncols}; use more rows instead"
        )
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)
