"""Exercise checks of Chapter 2, feature scaling: standardize, and scale a test split honestly."""

from __future__ import annotations

import torch

from ...lab.device import generator
from ...lab.scaling import fit_standard
from .core import CheckFailed, as_tensor, call, passed

__all__ = ["standardize", "standardize_split"]

_TOL = {"rtol": 1e-5, "atol": 1e-6}


def _data(n: int, d: int, seed: int, constant: int | None = None) -> torch.Tensor:
    """Features with different scales and offsets; column ``constant`` (if given) is constant."""
    gen = generator(seed)
    scales = 10 ** torch.linspace(-1, 2, d, dtype=torch.float64)
    offsets = torch.linspace(-5, 40, d, dtype=torch.float64)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * scales + offsets
    if constant is not None:
        x[:, constant] = 3.0
    return x


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, **_TOL))


def _standardize_mistakes(x: torch.Tensor) -> list[tuple[torch.Tensor, str]]:
    """What the typical wrong answers return on ``x``, each with what to tell the learner."""
    mean, std = x.mean(0), x.std(0, unbiased=False)
    lo, hi = x.amin(0), x.amax(0)
    return [
        ((x - mean) / x.std(0), "you divided by the unbiased standard deviation (n - 1); "
                                "standardization as in StandardScaler uses the biased one: "
                                "x.std(0, unbiased=False)"),
        ((x - x.mean(1, keepdim=True)) / x.std(1, unbiased=False, keepdim=True),
         "you standardized each example (row); each feature (column) needs its own mean and "
         "standard deviation: reduce over dim 0"),
        ((x - x.mean()) / x.std(unbiased=False), "you used one mean and one standard deviation for "
                                                 "the whole matrix; each feature needs its own "
                                                 "(reduce over dim 0)"),
        ((x - x.mean()) / x.std(), "you used one mean and one standard deviation for the whole "
                                   "matrix; each feature needs its own (reduce over dim 0)"),
        (x - mean, "you subtracted the mean but did not divide by the standard deviation"),
        (x / std, "you divided by the standard deviation but did not subtract the mean"),
        ((x - mean) / std.pow(2), "you divided by the variance; divide by its square root, the "
                                  "standard deviation"),
        ((x - lo) / (hi - lo), "that is min-max scaling (onto [0, 1]); standardization subtracts "
                               "the mean and divides by the standard deviation"),
    ]


def _denominator_hint(x: torch.Tensor, z: torch.Tensor) -> str | None:
    """If ``z`` is ``x`` centered per column but divided by something else, say what it looks like."""
    xc = x - x.mean(0)
    if not torch.isfinite(z).all() or (z == 0).any():
        return None
    den = (xc / z).median(0).values  # per column, if z = xc / den
    if not _close(z, xc / den):
        return None
    std, var = x.std(0, unbiased=False), x.var(0, unbiased=False)
    eps_std, eps_var = den - std, den.pow(2) - var
    if (eps_std > 0).all() and torch.allclose(eps_std, eps_std[0].expand_as(eps_std), rtol=1e-4):
        return (f"you added {eps_std[0].item():.3g} to the standard deviation; standardization "
                f"divides by the standard deviation itself (only a zero one is replaced by 1)")
    if (eps_var > 0).all() and torch.allclose(eps_var, eps_var[0].expand_as(eps_var), rtol=1e-4):
        return (f"you divided by sqrt(var + {eps_var[0].item():.3g}), as batch normalization does; "
                f"here standardize exactly, dividing by the standard deviation (a zero one by 1)")
    return ("each column is centered correctly but divided by the wrong number: divide by its "
            "biased standard deviation, x.std(0, unbiased=False)")


def standardize(fn) -> None:
    """Check ``fn(x)``: each feature (column) minus its mean, over its biased standard deviation."""
    name = "standardize"
    cases = [(6, 3, 0, None), (40, 5, 1, None), (200, 2, 2, None), (30, 4, 3, 1)]
    for n, d, seed, constant in cases:
        x = _data(n, d, seed, constant)
        x_in = x.clone()
        ref = fit_standard(x)(x)
        z = as_tensor(call(fn, x_in, name=name), name, ref)
        if not torch.equal(x_in, x):
            raise CheckFailed(f"{name}: the function changed its input x in place; return a new "
                              f"tensor and leave x as it was")
        if _close(z, ref):
            continue
        if constant is not None:
            if not torch.isfinite(z).all():
                raise CheckFailed(f"{name}: a constant feature (column {constant}) gave NaN or inf: "
                                  f"its standard deviation is 0. Divide by 1 there instead (as "
                                  f"StandardScaler does), so the column becomes 0")
            if _close(z[:, constant], torch.zeros(n, dtype=z.dtype)):
                raise CheckFailed(f"{name}: the constant column is right, but the others are not "
                                  f"(x of shape {tuple(x.shape)})")
        for wrong, hint in _standardize_mistakes(x):
            if _close(z, wrong):
                raise CheckFailed(f"{name}: {hint} (x of shape {tuple(x.shape)})")
        hint = _denominator_hint(x, z)
        if hint is not None:
            raise CheckFailed(f"{name}: {hint} (x of shape {tuple(x.shape)})")
        raise CheckFailed(f"{name}: wrong result for x of shape {tuple(x.shape)}: each column of "
                          f"the output should have mean 0 and (biased) standard deviation 1; "
                          f"yours have means {z.mean(0).tolist()} and standard deviations "
                          f"{z.std(0, unbiased=False).tolist()}")
    passed(name, "as StandardScaler, 4 data sets, a constant column")


def standardize_split(fn) -> None:
    """Check ``fn(x_train, x_test) -> (z_train, z_test)``: both scaled with the training statistics."""
    name = "standardize_split"
    for n_train, n_test, d, seed in ((30, 10, 3, 0), (100, 40, 5, 1)):
        x_train = _data(n_train, d, seed)
        x_test = _data(n_test, d, seed + 50) * 1.5 + 2  # the test split's own statistics differ
        fitted = fit_standard(x_train)
        refs = fitted(x_train), fitted(x_test)
        out = call(fn, x_train.clone(), x_test.clone(), name=name)
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise CheckFailed(f"{name}: return a pair (z_train, z_test), got {type(out).__name__}")
        z_train = as_tensor(out[0], f"{name} (z_train)", refs[0])
        z_test = as_tensor(out[1], f"{name} (z_test)", refs[1])
        if _close(z_train, refs[0]) and _close(z_test, refs[1]):
            continue
        both = fit_standard(torch.cat([x_train, x_test]))
        from_test = fit_standard(x_test)
        if _close(z_train, refs[0]):
            wrong = [
                (from_test(x_test), "z_test was standardized with the test split's own "
                                    "statistics: that uses the test data to fit the scaling. Apply "
                                    "the training mean and standard deviation to x_test"),
                (x_test, "x_test came back unscaled: apply the training statistics to it too"),
            ]
            for candidate, hint in wrong:
                if _close(z_test, candidate):
                    raise CheckFailed(f"{name}: {hint}")
            raise CheckFailed(f"{name}: z_train is right, but z_test is not (x_test - mean_train) / "
                              f"std_train")
        if _close(z_train, both(x_train)) and _close(z_test, both(x_test)):
            raise CheckFailed(f"{name}: you fitted the statistics on train and test together: the "
                              f"test split leaks into the scaling. Fit on x_train only")
        if _close(z_train, from_test(x_train)) and _close(z_test, from_test(x_test)):
            raise CheckFailed(f"{name}: you fitted the statistics on x_test and applied them to "
                              f"both; fit on x_train")
        for wrong, hint in _standardize_mistakes(x_train):
            if _close(z_train, wrong):
                raise CheckFailed(f"{name}: in z_train, {hint}")
        raise CheckFailed(f"{name}: z_train is not x_train standardized with its own mean and "
                          f"(biased) standard deviation")
    passed(name, "both splits scaled with the training statistics")
