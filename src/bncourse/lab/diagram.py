"""Computational graphs drawn with matplotlib: a box per value, an arrow per dependency."""

import math

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from .plot import COLORS

__all__ = ["BN_EDGES", "BN_NODES", "draw_bn_graph", "draw_graph"]

# Batch norm's forward graph for one channel: name -> (x, y, label), in inches on a figure
# 6.4 inches wide, so that it is shown at its own size in the book's column.
BN_NODES = {
    "x": (0.2, 0.0, r"$x_i$"),
    "mu": (0.8, -1.2, r"$\mu = \frac{1}{m}\sum_j x_j$"),
    "xmu": (1.45, 0.0, r"$x_i - \mu$"),
    "var": (2.15, 1.3, r"$\sigma^2 = \frac{1}{m}\sum_j (x_j - \mu)^2$"),
    "inv": (4.05, 1.3, r"$(\sigma^2 + \epsilon)^{-1/2}$"),
    "xhat": (4.05, 0.0, r"$\hat{x}_i$"),
    "gamma": (5.1, -1.2, r"$\gamma, \beta$"),
    "y": (5.1, 0.0, r"$y_i = \gamma \hat{x}_i + \beta$"),
    "loss": (6.2, 0.0, r"$L$"),
}

# (from, to, path, local derivative d(to)/d(from)[, offset]); the path colours the arrow, and the
# label sits `offset` inches from the arrow's middle: on its left (seen along the arrow) when
# positive, on its right when negative; 0.1 when not given.
BN_EDGES = [
    ("x", "xmu", "direct", r"$1$"),
    ("xmu", "xhat", "direct", r"$(\sigma^2+\epsilon)^{-1/2}$"),
    ("xhat", "y", "direct", r"$\gamma$"),
    ("y", "loss", "direct", r"$g_i$"),
    ("x", "mu", "mu", r"$\frac{1}{m}$", -0.1),
    ("mu", "xmu", "mu", r"$-1$", -0.1),
    ("xmu", "var", "var", r"$\frac{2}{m}(x_i - \mu)$"),
    ("var", "inv", "var", r"$-\frac{1}{2}(\sigma^2+\epsilon)^{-3/2}$", -0.3),
    ("inv", "xhat", "var", r"$x_i - \mu$", -0.1),
    ("gamma", "y", "param", r"$\hat{x}_i,\ 1$", -0.1),
]

PATHS = {
    "direct": ("the direct path", COLORS["grey"]),
    "mu": (r"through $\mu$", COLORS["accent"]),
    "var": (r"through $\sigma^2$", COLORS["plain"]),
    "param": ("parameters", COLORS["torch"]),
}


def draw_graph(nodes: dict, edges: list, ax=None, paths: dict | None = None):
    """Draw ``nodes`` (name -> (x, y, label)) and ``edges`` ((from, to, path, label[, offset])).

    Each path (a key of ``paths``: name -> (legend label, colour)) gets its own arrow colour and a
    legend entry. Without ``ax``, the figure is 6.4 inches wide, one data unit an inch, so that
    text keeps its size in the book's column. Returns the axes.
    """
    paths = PATHS if paths is None else paths
    for a, b, path, _, *offset in edges:
        missing = [n for n in (a, b) if n not in nodes]
        if missing:
            raise ValueError(f"edge {a!r} -> {b!r} names unknown node(s) {missing}; "
                             f"expected one of {sorted(nodes)}")
        if path not in paths:
            raise ValueError(f"edge {a!r} -> {b!r} has path {path!r}; expected one of "
                             f"{sorted(paths)}")
        if len(offset) > 1 or not all(isinstance(o, int | float) and o for o in offset):
            raise ValueError(f"edge {a!r} -> {b!r} has offset {offset}; expected one non-zero "
                             "number of inches (positive: left of the arrow, negative: right)")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 3.5))
    boxes = {}
    for name, (x, y, label) in nodes.items():
        boxes[name] = ax.text(
            x, y, label, ha="center", va="center", fontsize=11, zorder=3,
            bbox={"boxstyle": "round,pad=0.35", "fc": "white", "ec": "#333333", "lw": 1.1},
        )
    for a, b, path, label, *offset in edges:
        (xa, ya, _), (xb, yb, _) = nodes[a], nodes[b]
        ax.annotate(
            "", xy=(xb, yb), xytext=(xa, ya), zorder=2,
            arrowprops={"arrowstyle": "-|>", "color": paths[path][1], "lw": 2.0,
                        "mutation_scale": 14, "shrinkA": 0, "shrinkB": 0,
                        "patchA": boxes[a].get_bbox_patch(), "patchB": boxes[b].get_bbox_patch()},
        )
        if label:  # beside the arrow's middle, on the side asked for
            dx, dy = xb - xa, yb - ya
            norm = math.hypot(dx, dy) / (offset[0] if offset else 0.1)
            nx, ny = -dy / norm, dx / norm  # the arrow's left normal, scaled to the offset
            ha = "center" if abs(nx) < 0.03 else ("left" if nx > 0 else "right")
            va = "center" if abs(ny) < 0.03 else ("bottom" if ny > 0 else "top")
            ax.text((xa + xb) / 2 + nx, (ya + yb) / 2 + ny, label,
                    ha=ha, va=va, fontsize=10, color=paths[path][1], zorder=4)
    used = dict.fromkeys(edge[2] for edge in edges)
    ax.legend(
        handles=[Line2D([], [], color=paths[p][1], lw=2.5, label=paths[p][0]) for p in used],
        loc="lower center", ncols=len(used), fontsize=9, bbox_to_anchor=(0.5, -0.02),
    )
    xs = [x for x, _, _ in nodes.values()]
    ys = [y for _, y, _ in nodes.values()]
    ax.set_xlim(min(xs) - 0.25, max(xs) + 0.2)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.45)
    ax.set_axis_off()
    return ax


def draw_bn_graph(ax=None):
    """Batch norm's forward graph for one channel, each arrow labelled with its local derivative.

    No title: the book's caption states the figure's point.
    """
    return draw_graph(BN_NODES, BN_EDGES, ax)
