"""Feature scaling: statistics fitted on the training split, then applied to any split.

Fitting returns a small object holding the statistics; calling it transforms data. Fit on the
training data only, and apply the same object to the test data: the test split must not leak in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import Split

__all__ = ["Scaler", "Whitener", "fit_min_max", "fit_standard", "fit_whitening", "scale_split",
           "standardize"]


def _check_apply(x, features: int) -> None:
    """``x`` must be a tensor of shape ``(examples, features)`` to apply fitted statistics to."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != features:
        raise ValueError(f"expected x of shape (examples, {features}), got shape {tuple(x.shape)}")


def _features(x, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (examples, features), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 examples to fit statistics, got {x.shape[0]}")
    return x


@dataclass(frozen=True)
class Scaler:
    """Per-feature affine scaling ``(x - shift) / scale``, with statistics already fitted."""

    shift: torch.Tensor  # (features,)
    scale: torch.Tensor  # (features,)
    method: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_apply(x, self.shift.shape[0])
        return (x - self.shift.to(x)) / self.scale.to(x)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Undo the scaling: ``z * scale + shift``."""
        _check_apply(z, self.shift.shape[0])
        return z * self.scale.to(z) + self.shift.to(z)


def fit_standard(x: torch.Tensor) -> Scaler:
    """Standardization: subtract each feature's mean, divide by its standard deviation.

    The biased standard deviation (divide by n), as scikit-learn's ``StandardScaler``; a constant
    feature (zero deviation) is only centered, as there.
    """
    x = _features(x)
    xd = x.double()  # statistics in float64: pixel-like data with offsets stays exact
    mean = xd.mean(0)
    std = (xd - mean).pow(2).mean(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return Scaler(mean.to(x.dtype), std.to(x.dtype), "standard")


def fit_min_max(x: torch.Tensor, low: float = 0.0, high: float = 1.0) -> Scaler:
    """Min-max scaling: map each feature's training range onto ``[low, high]``.

    A constant feature is mapped to ``low``. Test values outside the training range land outside
    ``[low, high]``.
    """
    x = _features(x)
    if not high > low:
        raise ValueError(f"need low < high, got low={low}, high={high}")
    lo, hi = x.amin(0), x.amax(0)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    scale = span / (high - low)
    return Scaler(lo - low * scale, scale, "min_max")


@dataclass(frozen=True)
class Whitener:
    """Whitening ``(x - mean) @ matrix``: decorrelates the features and gives each unit variance."""

    mean: torch.Tensor  # (features,)
    matrix: torch.Tensor  # (features, features)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_apply(x, self.mean.shape[0])
        return (x - self.mean.to(x)) @ self.matrix.to(x)


def fit_whitening(x: torch.Tensor, eps: float = 1e-5) -> Whitener:
    """ZCA whitening: ``matrix = Sigma^(-1/2)`` of the (biased) covariance ``Sigma``.

    ``eps`` is added to the eigenvalues, so directions without variance are not blown up.
    """
    x = _features(x)
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    xd = x.double()
    mean = xd.mean(0)
    xc = xd - mean
    cov = xc.T @ xc / x.shape[0]
    lam, vec = torch.linalg.eigh(cov)
    matrix = vec @ torch.diag((lam.clamp_min(0) + eps).rsqrt()) @ vec.T
    return Whitener(mean.to(x.dtype), matrix.to(x.dtype))


def standardize(x: torch.Tensor) -> torch.Tensor:
    """``x`` standardized with its own statistics (fit and apply on the same data)."""
    return fit_standard(x)(x)


_FITS = {"standard": fit_standard, "min_max": fit_min_max, "whitening": fit_whitening}


def scale_split(split: Split, method: str = "standard") -> tuple[Split, Scaler | Whitener]:
    """Fit ``method`` on the training split only and apply it to both splits.

    Returns the scaled split and the fitted scaler (to apply to any later data).
    """
    if method not in _FITS:
        raise ValueError(f"method must be one of {sorted(_FITS)}, got {method!r}")
    fitted = _FITS[method](split.x_train)
    return Split(fitted(split.x_train), split.y_train, fitted(split.x_test), split.y_test), fitted
