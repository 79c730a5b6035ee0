"""Exercise checks of Chapter 4, train vs test: running averages, population statistics, the
eval-mode output of a layer, the noise of the batch mean, and group normalization."""

from __future__ import annotations

import torch
import torch.nn.functional as torch_F

from ... import functional as F
from ...lab import inference as inf
from ...lab.device import generator
from .core import CheckFailed, as_tensor, passed, run

__all__ = ["batch_mean_std", "eval_batch_norm", "group_norm", "population_stats", "running_update"]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def _pair(out, name: str, first: str, second: str):
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise CheckFailed(f"{name}: return a pair ({first}, {second}), got {type(out).__name__}")
    return out


# ---------------------------------------------------------------------------------------------


def running_update(fn) -> None:
    """Check ``fn(running_mean, running_var, x, momentum) -> (new_mean, new_var)``, PyTorch's rule."""
    name = "running_update"
    cases = [((16, 5), 0.1, 0), ((7, 3), 0.3, 1), ((40, 4), 0.01, 2), ((3, 6), 0.8, 3)]
    for shape, momentum, seed in cases:
        gen = generator(seed)
        c = shape[1]
        x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 3 + 2
        old_mean = torch.randn(c, generator=gen, dtype=torch.float64)
        old_var = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5
        ref_mean, ref_var = old_mean.clone(), old_var.clone()
        F.batch_norm(x, ref_mean, ref_var, training=True, momentum=momentum)
        what = f"x of shape {tuple(shape)}, momentum={momentum}"
        out = run(fn, old_mean.clone(), old_var.clone(), x.clone(), momentum, name=name, what=what)
        new_mean, new_var = _pair(out, name, "new_mean", "new_var")
        new_mean = as_tensor(new_mean, f"{name} (new_mean)", ref_mean)
        new_var = as_tensor(new_var, f"{name} (new_var)", ref_var)
        if _close(new_mean, ref_mean) and _close(new_var, ref_var):
            continue
        m = shape[0]
        mu, biased = x.mean(0), x.var(0, unbiased=False)
        unbiased = biased * m / (m - 1)
        def rev(old, new, k=momentum):
            return k * old + (1 - k) * new

        def fwd(old, new, k=momentum):
            return (1 - k) * old + k * new

        mistakes = [
            (rev(old_mean, mu), rev(old_var, biased),
             "this is CS231n's convention (momentum weighs the old value, biased variance stored). "
             "PyTorch's momentum is the weight of the NEW batch: (1 - momentum) * old + "
             "momentum * batch, and running_var stores the unbiased variance (times m / (m - 1))"),
            (rev(old_mean, mu), rev(old_var, unbiased),
             "momentum reversed: PyTorch's momentum is the weight of the new batch, "
             "new = (1 - momentum) * old + momentum * batch (Keras and CS231n weigh the old value)"),
            (fwd(old_mean, mu), fwd(old_var, biased),
             "the running variance got the biased batch variance; PyTorch stores the unbiased one, "
             "x.var(0, unbiased=True), i.e. the biased one times m / (m - 1)"),
            (fwd(old_mean, mu), fwd(old_var, unbiased.sqrt()),
             "running_var got the standard deviation; it stores the (unbiased) variance"),
            (fwd(old_mean, mu), old_var,
             "the running mean is right but the running variance was not updated"),
            (old_mean, fwd(old_var, unbiased),
             "the running variance is right but the running mean was not updated"),
            (mu, unbiased,
             "you returned the batch statistics themselves; blend them into the old values: "
             "(1 - momentum) * old + momentum * batch"),
        ]
        for wrong_mean, wrong_var, hint in mistakes:
            if _close(new_mean, wrong_mean) and _close(new_var, wrong_var):
                raise CheckFailed(f"{name}: {hint} ({what})")
        part = "new_mean" if not _close(new_mean, ref_mean) else "new_var"
        raise CheckFailed(f"{name}: {part} is wrong ({what}): expected "
                          f"{(ref_mean if part == 'new_mean' else ref_var).tolist()}, got "
                          f"{(new_mean if part == 'new_mean' else new_var).tolist()}")
    passed(name, f"PyTorch's rule on {len(cases)} random batches")


# ---------------------------------------------------------------------------------------------


def _chunks(sizes, channels: int, seed: int, offset: float, dtype) -> list[torch.Tensor]:
    """Chunks whose means differ from chunk to chunk, so every shortcut shows."""
    gen = generator(seed)
    scale = torch.rand(channels, generator=gen, dtype=torch.float64) * 2 + 0.5
    return [
        (offset + 2 * i + scale * torch.randn(n, channels, generator=gen, dtype=torch.float64)).to(dtype)
        for i, n in enumerate(sizes)
    ]


def population_stats(fn) -> None:
    """Check ``fn(chunks) -> (mean, var)``: exact mean and unbiased variance of all rows of all chunks."""
    name = "population_stats"
    cases = [  # (chunk sizes, channels, seed, offset, dtype)
        ((5, 12, 3, 20), 4, 0, 0.0, torch.float64),
        ((32, 32, 32, 9), 3, 1, 1.0, torch.float64),
        ((8, 40, 2), 5, 2, 0.0, torch.float32),
        ((64, 64, 64, 17), 3, 3, 1e4, torch.float32),  # a large offset: float32 cancellation shows
    ]
    for sizes, channels, seed, offset, dtype in cases:
        chunks = _chunks(sizes, channels, seed, offset, dtype)
        every = torch.cat(chunks).double()
        ref_mean, ref_var = every.mean(0), every.var(0)
        what = f"{len(sizes)} chunks of {list(sizes)} rows, {channels} channels, {dtype}"
        if offset > 1:
            what += f", values near {offset:g}"
        out = run(fn, [c.clone() for c in chunks], name=name, what=what)
        mean, var = _pair(out, name, "mean", "var")
        mean = as_tensor(mean, f"{name} (mean)", ref_mean)
        var = as_tensor(var, f"{name} (var)", ref_var)
        rtol = 1e-4 if dtype == torch.float32 else 1e-8
        if _close(mean, ref_mean, rtol, 1e-6) and _close(var, ref_var, rtol, 1e-6):
            continue
        n = every.shape[0]
        c64 = [c.double() for c in chunks]
        within = torch.stack([c.var(0, unbiased=False) for c in c64])
        weights = torch.tensor([len(c) for c in c64], dtype=torch.float64).unsqueeze(1) / n
        if not _close(mean, ref_mean, rtol, 1e-6):
            if _close(mean, torch.stack([c.mean(0) for c in c64]).mean(0), rtol, 1e-6):
                raise CheckFailed(f"{name}: the mean is the plain average of the chunk means; the "
                                  f"chunks differ in size, so weigh each chunk mean by its number "
                                  f"of rows ({what})")
            raise CheckFailed(f"{name}: the mean is wrong ({what}): expected {ref_mean.tolist()}, "
                              f"got {mean.tolist()}")
        mistakes = [
            (ref_var * (n - 1) / n, "the variance is the biased one (divided by N); the population "
                                    "statistics of the paper use the unbiased one, divided by N - 1"),
            ((weights * within).sum(0), "the variance is the average of the chunk variances: it "
                                        "misses the spread of the chunk means around the overall "
                                        "mean; combine them (Chan et al.) or take a second pass"),
            (within.mean(0), "the variance is the average of the chunk variances: it misses the "
                             "spread of the chunk means around the overall mean"),
            (torch.stack([c.var(0) for c in c64]).mean(0),
             "the variance is the average of the unbiased chunk variances: it misses the spread of "
             "the chunk means around the overall mean"),
        ]
        for wrong, hint in mistakes:
            if _close(var, wrong, rtol, 1e-6):
                raise CheckFailed(f"{name}: {hint} ({what})")
        if offset > 1:
            raise CheckFailed(f"{name}: the variance is wrong when the values sit far from 0 ({what}): "
                              f"this is what E[x^2] - E[x]^2 does in float32 (catastrophic "
                              f"cancellation). Subtract the mean before squaring: two passes, or "
                              f"combine per-chunk means and squared deviations")
        raise CheckFailed(f"{name}: the variance is wrong ({what}): expected {ref_var.tolist()}, "
                          f"got {var.tolist()}")
    passed(name, f"exact on {len(cases)} sets of unequal chunks, one far from 0, float32")


# ---------------------------------------------------------------------------------------------


def eval_batch_norm(fn) -> None:
    """Check ``fn(x, running_mean, running_var, weight, bias, eps) -> out``: eval-mode batch norm."""
    name = "eval_batch_norm"
    cases = [((6, 4), 0, 1e-5), ((32, 3), 1, 1e-3), ((5, 4, 7), 2, 1e-5), ((2, 5), 3, 0.1)]
    for shape, seed, eps in cases:
        gen = generator(seed)
        c = shape[1]
        x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2 + 1
        rm = torch.randn(c, generator=gen, dtype=torch.float64)
        rv = torch.rand(c, generator=gen, dtype=torch.float64) * 3 + 0.2
        rv[0] = 1e-4  # a channel where eps matters
        w = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5
        b = torch.randn(c, generator=gen, dtype=torch.float64)
        ref = F.batch_norm(x, rm, rv, w, b, training=False, eps=eps)
        what = f"x of shape {tuple(shape)}, eps={eps}"
        args = [t.clone() for t in (x, rm, rv, w, b)]
        out = as_tensor(run(fn, *args, eps, name=name, what=what), name, ref)
        if not torch.equal(args[1], rm) or not torch.equal(args[2], rv):
            raise CheckFailed(f"{name}: the function changed the running statistics; in eval mode "
                              f"they are read, never updated ({what})")
        if _close(out, ref):
            continue
        def v(t, x=x):
            return F.channel_view(t, x)

        mistakes = [
            (F.batch_norm_forward(x, w, b, eps)[0],
             "you normalized with the statistics of the batch itself, as in training; in eval mode "
             "use running_mean and running_var, so each output depends on its own input only"),
            ((x - v(rm)) / v(rv.sqrt()) * v(w) + v(b), "eps is missing: divide by sqrt(running_var + eps)"),
            ((x - v(rm)) / v(rv + eps) * v(w) + v(b),
             "you divided by the variance; divide by the standard deviation sqrt(running_var + eps)"),
            ((x - v(rm)) / v((rv + eps).sqrt()) * v(b) + v(w), "weight and bias are swapped: "
                                                              "out = weight * x_hat + bias"),
            ((x - v(rm)) / v((rv + eps).sqrt()), "weight and bias are not applied: "
                                                 "out = weight * x_hat + bias"),
        ]
        for wrong, hint in mistakes:
            if _close(out, wrong):
                raise CheckFailed(f"{name}: {hint} ({what})")
        raise CheckFailed(f"{name}: wrong output ({what}); expected weight * (x - running_mean) / "
                          f"sqrt(running_var + eps) + bias, per channel (dim 1)")
    passed(name, f"matches eval-mode batch norm on {len(cases)} layers, 2D and 3D inputs")


# ---------------------------------------------------------------------------------------------


def batch_mean_std(fn) -> None:
    """Check ``fn(x, m) -> std``: per channel, the std of the mean of a batch of ``m`` rows of ``x``
    (N, C) drawn without replacement, over all such batches."""
    name = "batch_mean_std"
    cases = [((10, 3), 4, 0), ((40, 5), 16, 1), ((200, 3), 8, 2), ((12, 4), 1, 3), ((9, 2), 9, 4)]
    for (n, c), m, seed in cases:
        gen = generator(seed)
        scale = torch.rand(c, generator=gen, dtype=torch.float64) * 2.5 + 0.5
        x = torch.randn(n, c, generator=gen, dtype=torch.float64) * scale + 3
        sigma = x.std(0, unbiased=False)  # the training set's own std (divided by N)
        ref = inf.mean_noise_theory(m, n) * sigma
        what = f"x of shape {(n, c)} (N = {n} training examples), batch size m = {m}"
        out = as_tensor(run(fn, x.clone(), m, name=name, what=what), name, ref)
        if _close(out, ref, 1e-6, 1e-9):
            continue
        s = x.std(0)  # unbiased, divided by N - 1
        fpc = (n - m) / (n - 1)
        mistakes = [
            (sigma**2 * fpc / m, "you returned the variance of the batch mean; its std is the square root"),
            (sigma * fpc**0.5 / m, "you divided by m; the variance of a mean of m values falls like 1 / m, "
                                   "so its std falls like 1 / sqrt(m)"),
            (sigma / m**0.5, "the finite-population correction is missing: the m rows are drawn without "
                             "replacement from only N, so multiply by sqrt((N - m) / (N - 1))"),
            (s / m**0.5, "the finite-population correction is missing: the m rows are drawn without "
                         "replacement from only N, so multiply by sqrt((N - m) / (N - 1))"),
            (sigma * fpc / m**0.5, "the finite-population correction (N - m) / (N - 1) multiplies the "
                                   "variance; the std gets its square root"),
            (sigma * ((n - m) / n / m) ** 0.5,
             "with the population's own std (biased, divided by N) the correction is (N - m) / (N - 1), "
             "not (N - m) / N; (N - m) / N goes with the unbiased std, x.std(0)"),
            (s * (fpc / m) ** 0.5,
             "you used the unbiased std x.std(0) with the correction (N - m) / (N - 1); that correction "
             "goes with the population's own std, x.std(0, unbiased=False) (divided by N)"),
        ]
        for wrong, hint in mistakes:
            if _close(out, wrong, 1e-6, 1e-9):
                raise CheckFailed(f"{name}: {hint} ({what})")
        raise CheckFailed(f"{name}: wrong result ({what}): expected sigma * sqrt((N - m) / ((N - 1) * m)) "
                          f"per channel, with sigma = x.std(0, unbiased=False): {ref.tolist()}, got "
                          f"{out.tolist()}")
    passed(name, f"exact on {len(cases)} training sets, batches of 1 to the whole set")


# ---------------------------------------------------------------------------------------------


def group_norm(fn) -> None:
    """Check ``fn(x, groups, eps) -> out``: group normalization of ``x`` (N, C), no scale or shift."""
    name = "group_norm"
    cases = [((8, 12), 3, 0, 1e-5), ((5, 16), 4, 1, 1e-5), ((3, 6), 2, 2, 1e-2), ((1, 8), 2, 3, 1e-5)]
    for shape, groups, seed, eps in cases:
        gen = generator(seed)
        n, c = shape
        x = torch.randn(n, c, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3, c,
                                                                                   dtype=torch.float64)
        x = x + torch.linspace(-2, 5, c, dtype=torch.float64)
        x[:, : c // groups] *= 0.01  # the first group has a tiny variance: eps matters there
        ref = torch_F.group_norm(x, groups, eps=eps)
        what = f"x of shape {tuple(shape)}, groups={groups}, eps={eps}"
        out = as_tensor(run(fn, x.clone(), groups, eps, name=name, what=what), name, ref)
        if _close(out, ref):
            continue
        size = c // groups
        mistakes = [
            (torch_F.layer_norm(x, (c,), eps=eps),
             "you normalized over all channels of each example (layer norm, one group); "
             "split the C channels into `groups` groups of C // groups neighbours"),
            (torch_F.batch_norm(x, None, None, training=True, eps=eps) if n > 1 else None,
             "you normalized each channel over the batch (batch norm); group norm takes the "
             "statistics of each example separately, within its group of channels"),
            (torch_F.group_norm(x.reshape(n, size, groups).transpose(1, 2).reshape(n, c), groups,
                                eps=eps).reshape(n, groups, size).transpose(1, 2).reshape(n, c),
             "your groups interleave the channels (channel k in group k % groups); a group is "
             "C // groups neighbouring channels: x.reshape(N, groups, C // groups)"),
            (_unbiased_group_norm(x, groups, eps),
             "you normalized with the unbiased variance; normalization uses the biased one"),
            (torch_F.group_norm(x, groups, eps=0.0), "eps is missing: divide by sqrt(var + eps)"),
        ]
        for wrong, hint in mistakes:
            if wrong is not None and _close(out, wrong):
                raise CheckFailed(f"{name}: {hint} ({what})")
        raise CheckFailed(f"{name}: wrong output ({what}); each example's group of C // groups "
                          f"channels should come out with mean 0 and variance 1 (up to eps)")
    passed(name, f"as torch.nn.functional.group_norm on {len(cases)} inputs, a batch of 1 too")


def _unbiased_group_norm(x: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    g = x.reshape(x.shape[0], groups, -1)
    out = (g - g.mean(-1, keepdim=True)) / (g.var(-1, keepdim=True) + eps).sqrt()
    return out.reshape_as(x)

