"""The loss landscape of least squares: why badly scaled features make gradient descent slow.

Chapters 1 and 2 fit ``a = w1*x1 + w2*x2 + b`` by least squares. Its loss is a quadratic in
``theta = (w1, w2, b)``, so everything gradient descent does is fixed by one matrix, the Hessian
``H = D^T D / n`` (``D`` is ``x`` with a column of ones for the bias): the largest stable learning
rate is ``2 / lambda_max(H)`` and the steps to converge grow with ``kappa = lambda_max / lambda_min``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .device import generator

__all__ = ["Descent", "LeastSquares", "gradient_descent", "plot_landscape", "step_bounds", "two_features"]


def two_features(n: int = 200, scales=(1.0, 10.0), means=(0.0, 0.0), correlation: float = 0.0,
                 weights=(1.0, 1.0), bias: float = 0.5, noise: float = 0.1,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``x`` of shape ``(n, 2)`` and targets ``y = x @ weights + bias + noise``, float64.

    The sample moments are exactly the requested ones (the standard normal draws are whitened
    first): feature ``i`` has mean ``means[i]`` and (biased) standard deviation ``scales[i]``, and the
    two features have sample correlation ``correlation``. So the Hessian is known in closed form.
    """
    if not isinstance(n, int) or n < 3:
        raise ValueError(f"n must be an int of at least 3, got {n!r}")
    scales = torch.as_tensor(scales, dtype=torch.float64)
    means = torch.as_tensor(means, dtype=torch.float64)
    weights = torch.as_tensor(weights, dtype=torch.float64)
    for name, t in (("scales", scales), ("means", means), ("weights", weights)):
        if t.shape != (2,):
            raise ValueError(f"{name} must hold two numbers, one per feature, got shape {tuple(t.shape)}")
    if not bool((scales > 0).all()):
        raise ValueError(f"scales must be positive, got {scales.tolist()}")
    if not -1 < correlation < 1:
        raise ValueError(f"correlation must be in (-1, 1), got {correlation}")
    gen = generator(seed)
    z = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / n)).T  # sample covariance exactly I
    mix = torch.linalg.cholesky(torch.tensor([[1.0, correlation], [correlation, 1.0]],
                                             dtype=torch.float64))
    x = means + (z @ mix.T) * scales
    y = x @ weights + bias + noise * torch.randn(n, generator=gen, dtype=torch.float64)
    return x, y


@dataclass(frozen=True)
class LeastSquares:
    """The loss ``L(theta) = 1/(2n) * ||D theta - y||^2`` with ``D = [x, 1]`` (``[x]`` without bias).

    ``theta`` holds the weights, then the bias (when ``bias``). Tensors are float64.
    """

    x: torch.Tensor
    y: torch.Tensor
    bias: bool = True

    def __post_init__(self):
        for name in ("x", "y"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        if self.x.ndim != 2:
            raise ValueError(f"x must have shape (n, features), got shape {tuple(self.x.shape)}")
        if self.y.shape != self.x.shape[:1]:
            raise ValueError(f"y must have shape ({self.x.shape[0]},) to match x, "
                             f"got shape {tuple(self.y.shape)}")
        object.__setattr__(self, "x", self.x.detach().double())
        object.__setattr__(self, "y", self.y.detach().double())

    @property
    def design(self) -> torch.Tensor:
        """``D``: the features, with a column of ones when the model has a bias."""
        if not self.bias:
            return self.x
        return torch.cat([self.x, torch.ones_like(self.x[:, :1])], dim=1)

    @property
    def hessian(self) -> torch.Tensor:
        """``H = D^T D / n``: the same at every ``theta``, since the loss is quadratic."""
        d = self.design
        return d.T @ d / d.shape[0]

    @property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of the Hessian, ascending."""
        return torch.linalg.eigvalsh(self.hessian)

    @property
    def condition_number(self) -> float:
        """``kappa = lambda_max / lambda_min`` (infinite when the Hessian is singular)."""
        lam = self.eigenvalues
        return math.inf if lam[0] <= 1e-12 * lam[-1] else (lam[-1] / lam[0]).item()

    @property
    def max_stable_lr(self) -> float:
        """``2 / lambda_max``: gradient descent diverges at any larger learning rate."""
        return 2.0 / self.eigenvalues[-1].item()

    @property
    def minimizer(self) -> torch.Tensor:
        """``theta*``, the least-squares solution."""
        return torch.linalg.lstsq(self.design, self.y.unsqueeze(1)).solution.squeeze(1)

    @property
    def min_loss(self) -> float:
        return self.loss(self.minimizer).item()

    def _theta(self, theta) -> torch.Tensor:
        theta = torch.as_tensor(theta, dtype=torch.float64)
        p = self.design.shape[1]
        if theta.shape[-1:] != (p,):
            raise ValueError(f"theta must end in a dim of size {p} (weights"
                             f"{', bias' if self.bias else ''}), got shape {tuple(theta.shape)}")
        return theta

    def loss(self, theta) -> torch.Tensor:
        """``L(theta)``; ``theta`` may carry leading batch dims (a grid of points)."""
        r = self._theta(theta) @ self.design.T - self.y
        return 0.5 * (r * r).mean(-1)

    def grad(self, theta) -> torch.Tensor:
        """``dL/dtheta = D^T (D theta - y) / n``, shaped like ``theta``."""
        d = self.design
        return (self._theta(theta) @ d.T - self.y) @ d / d.shape[0]


@dataclass
class Descent:
    """A gradient-descent run: every iterate, its loss, and when (if) it converged."""

    path: torch.Tensor  # (steps + 1, p)
    loss: torch.Tensor  # (steps + 1,)
    lr: float
    converged_at: int | None
    diverged: bool

    @property
    def steps(self) -> int:
        return self.path.shape[0] - 1


def gradient_descent(problem: LeastSquares, lr: float, start=None, max_steps: int = 200_000,
                     tol: float = 1e-3) -> Descent:
    """Run ``theta <- theta - lr * grad L(theta)`` from ``start`` (zeros by default).

    Converged (``converged_at`` = the step count) once ``||theta - theta*||`` has fallen to ``tol``
    times its starting value; ``diverged`` once it has grown a million-fold; else it stops after
    ``max_steps``. ``tol=0`` runs all ``max_steps`` steps (to draw a path).
    """
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be non-negative, got {tol}")
    opt = problem.minimizer
    theta = torch.zeros_like(opt) if start is None else problem._theta(start)
    if theta.shape != opt.shape:
        raise ValueError(f"start must have shape {tuple(opt.shape)}, got {tuple(theta.shape)}")
    # The gradient of a quadratic is H (theta - theta*), so the error e = theta - theta* obeys
    # e <- (I - lr H) e exactly. Iterating on e (in NumPy: tiny matrices, many steps) is both
    # faster and free of the cancellation in computing L(theta) - L* near the minimum.
    h = problem.hessian.numpy()
    step_matrix = np.eye(h.shape[0]) - lr * h
    e = (theta - opt).numpy()
    errors = [e]
    start_dist = float(np.linalg.norm(e))
    converged_at, diverged = None, False
    for k in range(max_steps + 1):
        dist = float(np.linalg.norm(errors[-1]))
        if dist <= tol * start_dist:
            converged_at = k
            break
        if not math.isfinite(dist) or dist > 1e6 * start_dist:
            diverged = True
            break
        if k == max_steps:
            break
        errors.append(step_matrix @ errors[-1])
    err = torch.from_numpy(np.stack(errors))
    excess = 0.5 * ((err @ problem.hessian) * err).sum(1)
    return Descent(err + opt, excess + problem.min_loss, lr, converged_at, diverged)


def step_bounds(problem: LeastSquares, lr: float, start=None, tol: float = 1e-3) -> tuple[float, float]:
    """The law behind :func:`gradient_descent`'s step count: bounds ``(low, high)`` on ``converged_at``.

    Each eigendirection ``i`` of ``H`` shrinks by ``|1 - lr * lambda_i|`` per step. With ``q`` the
    largest of these factors, ``||e_k|| <= q^k ||e_0||``, so the error has shrunk to ``tol`` times
    its start after at most ``high = ceil(ln(1/tol) / -ln q)`` steps; and the part of the starting
    error along the directions that shrink by ``q``, a share ``f`` of it, alone needs
    ``low = ceil(ln(f/tol) / -ln q)`` steps (0 when ``f <= tol``). Both are inf when ``q >= 1``
    (no convergence), and ``(1, 1)`` when ``q = 0`` (one step lands on the minimum). Float rounding
    can move a count across a bound by a step when it lies on one.
    """
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    opt = problem.minimizer
    theta = torch.zeros_like(opt) if start is None else problem._theta(start)
    if theta.shape != opt.shape:
        raise ValueError(f"start must have shape {tuple(opt.shape)}, got {tuple(theta.shape)}")
    lam, vec = torch.linalg.eigh(problem.hessian)
    factors = (1 - lr * lam).abs()
    q = factors.max().item()
    e0 = theta - opt
    norm = e0.norm().item()
    if norm <= 1e-12 * max(1.0, opt.norm().item()):  # starts at the minimum, to rounding
        return 0.0, 0.0
    if q >= 1:
        return math.inf, math.inf
    if q <= 1e-12:
        return 1.0, 1.0
    slowest = factors >= q * (1 - 1e-9)
    share = (vec[:, slowest].T @ e0).norm().item() / norm
    per_step = -math.log(q)
    high = math.ceil(math.log(1 / tol) / per_step)
    low = 0 if share <= tol else math.ceil(math.log(share / tol) / per_step)
    return float(low), float(high)


def plot_landscape(ax, problem: LeastSquares, path: torch.Tensor | None = None, dims=(0, 1),
                   span=None, levels: int = 10, color: str | None = None, label: str | None = None):
    """Contours of the loss over two coordinates of ``theta`` (the others at the minimizer).

    ``span`` is the half-width of the window per coordinate (default: fits ``path``, or 1).
    Contour levels are geometric in the excess loss ``L - L*``, so the elongation shows at every
    scale. ``path`` (iterates from :func:`gradient_descent`) is drawn on top.
    """
    from . import plot

    i, j = dims
    opt = problem.minimizer
    if span is None:
        if path is None:
            span = (1.0, 1.0)
        else:
            dev = (path[:, [i, j]] - opt[[i, j]]).abs().amax(0) * 1.15
            span = (max(dev[0].item(), 1e-9), max(dev[1].item(), 1e-9))
    a = torch.linspace(-span[0], span[0], 201, dtype=torch.float64) + opt[i]
    b = torch.linspace(-span[1], span[1], 201, dtype=torch.float64) + opt[j]
    grid = opt.repeat(201, 201, 1)
    grid[..., i] = a.unsqueeze(0)
    grid[..., j] = b.unsqueeze(1)
    excess = (problem.loss(grid) - problem.min_loss).clamp_min(1e-300)
    top = excess.max().item()
    lv = torch.logspace(math.log10(top) - 4, math.log10(top), levels).tolist()
    ax.contour(a.numpy(), b.numpy(), excess.numpy(), levels=lv, colors=plot.COLORS["grey"],
               linewidths=0.8)
    ax.plot(opt[i].item(), opt[j].item(), "*", color="black", ms=10, label=r"minimum $\theta^*$")
    if path is not None:
        ax.plot(path[:, i].numpy(), path[:, j].numpy(), ".-", color=color or plot.COLORS["plain"],
                lw=1.0, ms=4, label=label)
    names = [f"w_{k + 1}" for k in range(problem.x.shape[1])] + (["b"] if problem.bias else [])
    ax.set_xlabel(f"${names[i]}$")
    ax.set_ylabel(f"${names[j]}$")
    return ax
