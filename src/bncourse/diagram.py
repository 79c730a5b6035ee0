"""Computational graphs drawn with matplotlib: a box per value, an arrow per dependency."""

import math

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from .plot import COLORS

__all__ = ["BN_EDGES", "BN_NODES", "draw_bn_graph", "draw_graph"]

# Batch norm's forward graph for one channel: name -> (x, y, label).
BN_NODES = {
    "x": (0.0, 0.0, r"$x_i$"),
    "mu": (1.9, 1.35, r"$\mu = \frac{1}{m}\sum_j x_j$"),
    "xmu": (3.8, 0.0, r"$x_i - \mu$"),
    "var": (5.6, 1.35, r"$\sigma^2 = \frac{1}{m}\sum_j (x_j - \mu)^2$"),
    "inv": (9.0, 1.35, r"$(\sigma^2 + \epsilon)^{-1/2}$"),
    "xhat": (10.5, 0.0, r"$\hat{x}_i$"),
    "gamma": (10.5, -1.25, r"$\gamma, \beta$"),
    "y": (12.2, 0.0, r"$y_i = \gamma \hat{x}_i + \beta$"),
    "loss": (13.9, 0.0, r"$L$"),
}

# (from, to, path, local derivative d(to)/d(from)); the path colours the arrow.
BN_EDGES = [
    ("x", "xmu", "direct", r"$1$"),
    ("xmu", "xhat", "direct", r"$(\sigma^2+\epsilon)^{-1/2}$"),
    ("xhat", "y", "direct", r"$\gamma$"),
    ("y", "loss", "direct", r"$g_i$"),
    ("x", "mu", "mu", r"$\frac{1}{m}$"),
    ("mu", "xmu", "mu", r"$-1$"),
    ("xmu", "var", "var", r"$\frac{2}{m}(x_i - \mu)$"),
    ("var", "inv", "var", r"$-\frac{1}{2}(\sigma^2+\epsilon)^{-3/2}$"),
    ("inv", "xhat", "var", r"$x_i - \mu$"),
    ("gamma", "y", "param", r"$\hat{x}_i,\ 1$"),
]

PATHS = {
    "direct": ("the direct path", COLORS["grey"]),
    "mu": (r"through $\mu$", COLORS["accent"]),
    "var": (r"through $\sigma^2$", COLORS["plain"]),
    "param": ("parameters", COLORS["torch"]),
}


def draw_graph(nodes: dict, edges: list, ax=None, paths: dict | None = None):
    """Draw ``nodes`` (name -> (x, y, label)) and ``edges`` ((from, to, path, label)) on ``ax``.

    Each path (a key of ``paths``: name -> (legend label, colour)) gets its own arrow colour and a
    legend entry. Returns the axes.
    """
    paths = PATHS if paths is None else paths
    for a, b, path, _ in edges:
        missing = [n for n in (a, b) if n not in nodes]
        if missing:
            raise ValueError(f"edge {a!r} -> {b!r} names unknown node(s) {missing}; "
                             f"expected one of {sorted(nodes)}")
        if path not in paths:
            raise ValueError(f"edge {a!r} -> {b!r} has path {path!r}; expected one of "
                             f"{sorted(paths)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 3.6))
    boxes = {}
    for name, (x, y, label) in nodes.items():
        boxes[name] = ax.text(
            x, y, label, ha="center", va="center", fontsize=11, zorder=3,
            bbox={"boxstyle": "round,pad=0.45", "fc": "white", "ec": "#333333", "lw": 1.1},
        )
    for a, b, path, label in edges:
        (xa, ya, _), (xb, yb, _) = nodes[a], nodes[b]
        ax.annotate(
            "", xy=(xb, yb), xytext=(xa, ya), zorder=2,
            arrowprops={"arrowstyle": "-|>", "color": paths[path][1], "lw": 2.0,
                        "mutation_scale": 16, "shrinkA": 0, "shrinkB": 0,
                        "patchA": boxes[a].get_bbox_patch(), "patchB": boxes[b].get_bbox_patch()},
        )
        if label:  # beside the arrow's middle, on its left
            dx, dy = xb - xa, yb - ya
            norm = math.hypot(dx, dy)
            nx, ny = -dy / norm, dx / norm
            ha = "center" if abs(nx) < 0.3 else ("left" if nx > 0 else "right")
            ax.text((xa + xb) / 2 + 0.3 * nx, (ya + yb) / 2 + 0.3 * ny, label,
                    ha=ha, va="center", fontsize=10, color=paths[path][1], zorder=4)
    used = dict.fromkeys(path for _, _, path, _ in edges)
    ax.legend(
        handles=[Line2D([], [], color=paths[p][1], lw=2.5, label=paths[p][0]) for p in used],
        loc="lower left", ncols=len(used), fontsize=9,
    )
    xs = [x for x, _, _ in nodes.values()]
    ys = [y for _, y, _ in nodes.values()]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(min(ys) - 1.3, max(ys) + 0.8)
    ax.set_axis_off()
    return ax


def draw_bn_graph(ax=None):
    """Batch norm's forward graph for one channel, each arrow labelled with its local derivative."""
    ax = draw_graph(BN_NODES, BN_EDGES, ax)
    ax.set_title(r"$x_i$ reaches the loss three ways: directly, through $\mu$, through $\sigma^2$"
                 "\n(arrows labelled with their local derivatives)")
    return ax
