"""Exercise checks of Chapter 8, batch norm across devices: merging the statistics of two shards, and
the training-mode forward pass of Batch Renormalization."""

from __future__ import annotations

import torch

from ...lab.device import generator
from ...smallbatch import BatchRenorm
from .core import CheckFailed, as_tensor, passed, run

__all__ = ["batch_renorm", "merge_shards"]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=1e-9))


# ---------------------------------------------------------------------------------------------


def _shard_stats(x64: torch.Tensor, dtype) -> tuple[int, torch.Tensor, torch.Tensor]:
    n = x64.shape[0]
    if n == 0:
        zeros = torch.zeros(x64.shape[1], dtype=dtype)
        return 0, zeros, zeros.clone()
    return n, x64.mean(0).to(dtype), x64.var(0, unbiased=False).to(dtype)


def merge_shards(fn) -> None:
    """Check ``fn((n_a, mean_a, var_a), (n_b, mean_b, var_b)) -> (n, mean, var)``, biased variances."""
    name = "merge_shards"
    cases = [  # (n_a, n_b, channels, offset, dtype)
        (5, 12, 3, 0.0, torch.float64),
        (100, 7, 4, 2.0, torch.float64),
        (9, 0, 2, 1.0, torch.float64),  # the second device got no examples
        (3000, 1000, 3, 1e4, torch.float32),  # far from zero, in float32
    ]
    for seed, (n_a, n_b, channels, offset, dtype) in enumerate(cases):
        gen = generator(seed)
        scale = torch.rand(channels, generator=gen, dtype=torch.float64) + 0.5
        xa = offset + scale * torch.randn(n_a, channels, generator=gen, dtype=torch.float64)
        xb = offset + 1.5 + scale * torch.randn(n_b, channels, generator=gen, dtype=torch.float64)
        a, b = _shard_stats(xa, dtype), _shard_stats(xb, dtype)
        every = torch.cat([xa, xb])
        ref_mean, ref_var = every.mean(0), every.var(0, unbiased=False)
        what = f"shards of {n_a} and {n_b} rows, {channels} channels, {dtype}"
        if offset > 100:
            what += f", values near {offset:g}"
        out = run(fn, a, b, name=name, what=what)
        if not isinstance(out, tuple | list) or len(out) != 3:
            raise CheckFailed(f"{name}: return a triple (n, mean, var), got {type(out).__name__} ({what})")
        n, mean, var = out
        if int(torch.as_tensor(n)) != n_a + n_b:
            raise CheckFailed(f"{name}: the count should be n_a + n_b = {n_a + n_b}, got {n} ({what})")
        mean = as_tensor(mean, f"{name} (mean)", ref_mean)
        var = as_tensor(var, f"{name} (var)", ref_var)
        rtol = 1e-3 if dtype == torch.float32 else 1e-9  # float32 means near 1e4 are rounded to ~1e-3
        if not _close(mean, ref_mean, rtol):
            hint = "the mean is wrong"
            if _close(mean, (a[1] + b[1]).double() / 2, rtol):
                hint = "the mean is the plain average of the two means; weigh each by its count"
            raise CheckFailed(f"{name}: {hint} ({what}): expected {ref_mean.tolist()}, got {mean.tolist()}")
        if _close(var, ref_var, rtol):
            continue
        n_all = n_a + n_b
        va, vb = a[2].double(), b[2].double()
        within = (n_a * va + n_b * vb) / n_all
        mistakes = [
            (within, "the variance is the count-weighted average of the two variances: it misses the spread "
                     "of the two means around the overall mean, n_a * n_b / n**2 * (mean_a - mean_b)**2"),
            ((va + vb) / 2, "the variance is the plain average of the two variances: weigh by the counts, "
                            "and add the spread of the two means, n_a * n_b / n**2 * (mean_a - mean_b)**2"),
            (ref_var * n_all / (n_all - 1), "this is the unbiased variance (divided by n - 1); batch norm "
                                            "normalizes with the biased one, divided by n"),
        ]
        for wrong, hint in mistakes:
            if _close(var, wrong, rtol):
                raise CheckFailed(f"{name}: {hint} ({what})")
        if offset > 100:
            raise CheckFailed(f"{name}: the variance is wrong for values far from zero ({what}): rebuilding "
                              f"sums of squares, E[x^2] - E[x]^2, cancels catastrophically in float32. Merge "
                              f"centred quantities: n_a * var_a + n_b * var_b plus the spread of the means")
        raise CheckFailed(f"{name}: the variance is wrong ({what}): expected {ref_var.tolist()}, "
                          f"got {var.tolist()}")
    passed(name, f"{len(cases)} pairs of shards, one empty, one near 1e4 in float32")


# ---------------------------------------------------------------------------------------------


def _renorm(x, mu, sigma, r_max, d_max, eps, *, clip_r=True, clip_d=True, invert_r=False, d_sign=1.0,
            eps_in_sigma=True, unbiased=False):
    """Batch Renormalization's x_hat written out, with switches for the usual slips."""
    mean = x.mean(0)
    var = x.var(0, unbiased=unbiased)
    sigma_b = torch.sqrt(var + eps) if eps_in_sigma else torch.sqrt(var)
    r = sigma / sigma_b if invert_r else sigma_b / sigma
    d = d_sign * (mean - mu) / sigma
    if clip_r:
        r = r.clamp(1 / r_max, r_max)
    if clip_d:
        d = d.clamp(-d_max, d_max)
    return (x - mean) / sigma_b * r + d


def batch_renorm(fn) -> None:
    """Check ``fn(x, running_mean, running_std, r_max, d_max, eps) -> x_hat`` for ``x`` of shape (N, C)."""
    name = "batch_renorm"
    cases = [(16, 5, 3.0, 5.0, 1e-5), (8, 6, 2.0, 1.0, 1e-3), (32, 4, 1.5, 0.5, 1e-5)]
    for seed, (n, c, r_max, d_max, eps) in enumerate(cases):
        gen = generator(seed)
        x = torch.randn(n, c, generator=gen, dtype=torch.float64) * 2 + 1
        # some channels inside the bounds, some with r or d clipped
        mu = x.mean(0) + torch.linspace(-3 * d_max, 3 * d_max, c, dtype=torch.float64) * x.std(0)
        sigma = x.std(0) * torch.logspace(-1, 1, c, dtype=torch.float64).flip(0)
        layer = BatchRenorm(c, eps=eps, r_max=r_max, d_max=d_max, affine=False, dtype=torch.float64)
        layer.running_mean.copy_(mu)
        layer.running_std.copy_(sigma)
        with torch.no_grad():
            ref = layer(x)
        what = f"x of shape {(n, c)}, r_max={r_max}, d_max={d_max}, eps={eps}"
        args = [x.clone(), mu.clone(), sigma.clone()]
        out = as_tensor(run(fn, *args, r_max, d_max, eps, name=name, what=what), name, ref)
        if not (torch.equal(args[1], mu) and torch.equal(args[2], sigma)):
            raise CheckFailed(f"{name}: the function changed running_mean or running_std; it only reads them "
                              f"(the layer moves them after the normalization) ({what})")
        if _close(out, ref, 1e-6):
            continue
        def slip(x=x, mu=mu, sigma=sigma, r_max=r_max, d_max=d_max, eps=eps, **kw):
            return _renorm(x, mu, sigma, r_max, d_max, eps, **kw)

        mistakes = [
            (slip(clip_r=False, clip_d=False),
             "r and d are not clipped: unbounded, x_hat is (x - running_mean) / running_std, the "
             "inference normalization, taken from running averages that may still be far off; clip r "
             "to [1/r_max, r_max] and d to [-d_max, d_max]"),
            (slip(clip_r=False), "r is not clipped: r = clip(sigma_B / sigma, 1/r_max, r_max)"),
            (slip(clip_d=False), "d is not clipped: d = clip((mu_B - mu) / sigma, -d_max, d_max)"),
            (slip(invert_r=True), "r is upside down: r = sigma_B / sigma (batch over running)"),
            (slip(d_sign=-1.0), "d has the wrong sign: d = (mu_B - mu) / sigma"),
            (slip(eps_in_sigma=False), "eps is missing: sigma_B = sqrt(var_B + eps)"),
            (slip(unbiased=True), "the batch variance is the unbiased one; normalize with the biased one "
                                  "(divided by N)"),
            ((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps),
             "this is plain batch norm: multiply by r and add d"),
        ]
        for wrong, hint in mistakes:
            if _close(out, wrong, 1e-6):
                raise CheckFailed(f"{name}: {hint} ({what})")
        raise CheckFailed(f"{name}: wrong output ({what}); expected (x - mu_B) / sigma_B * r + d, "
                          f"per channel")
    passed(name, f"Algorithm 1 on {len(cases)} batches, r and d clipped in some channels")
