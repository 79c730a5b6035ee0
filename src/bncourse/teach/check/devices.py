"""Exercise checks of Chapter 8, batch norm across devices: merging the statistics of two shards and of
K shards on the device, the number of devices at which synchronized batch norm sends as much as the
gradients and the size of a process group, ghost batch norm's normalization and running statistics,
and Batch Renormalization's forward pass and bounds."""

from __future__ import annotations

import torch

from ...lab.device import generator
from ...lab.distributed import counting_host_syncs, ring_values
from ...smallbatch import BatchRenorm, GhostBatchNorm
from ...sync import merge_moments
from .core import CheckFailed, as_tensor, passed, run

__all__ = ["batch_renorm", "ghost_norm", "ghost_running", "group_size", "merge_on_device", "merge_shards",
           "renorm_bounds", "sync_crossover"]


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


def merge_on_device(fn) -> None:
    """Check ``fn(counts, means, m2s) -> (n, mean, var)`` for K shards: ``counts`` (K,) int64, ``means``
    and ``m2s`` (K, C); the total count, the mean and the biased variance, computed without bringing
    any value to Python (the function must also run on the meta device, which holds shapes only)."""
    name = "merge_on_device"
    cases = [([5, 0, 7, 3], 3, torch.float64), ([1, 1], 2, torch.float64), ([40, 2, 0, 0, 9, 13], 4,
                                                                            torch.float32)]
    for seed, (counts, c, dtype) in enumerate(cases):
        gen = generator(seed)
        means = (torch.randn(len(counts), c, generator=gen, dtype=torch.float64) * 2 + 3).to(dtype)
        spread = torch.rand(len(counts), c, generator=gen, dtype=torch.float64).to(dtype)
        counts_t = torch.tensor(counts)
        m2s = spread * counts_t[:, None].to(dtype)  # a shard with count 0 has M2 = 0
        n_ref, mean_ref, m2_ref = merge_moments(counts_t, means, m2s)
        var_ref = m2_ref / n_ref
        what = f"counts {counts}, {c} channels, {dtype}"
        with counting_host_syncs() as syncs:
            out = run(fn, counts_t.clone(), means.clone(), m2s.clone(), name=name, what=what)
        if not isinstance(out, tuple | list) or len(out) != 3:
            raise CheckFailed(f"{name}: return a triple (n, mean, var), got {type(out).__name__} ({what})")
        if syncs:
            calls = ", ".join(f".{k}()" if not k.startswith("__") else k.strip("_") + "(tensor)"
                              for k in sorted(syncs))
            raise CheckFailed(f"{name}: the function brings values to Python ({calls}); on a GPU each "
                              f"makes the CPU wait for the device. Keep n a tensor ({what})")
        n, mean, var = out
        if not isinstance(n, torch.Tensor) or n.dtype != torch.int64 or int(n) != sum(counts):
            raise CheckFailed(f"{name}: n should be the total count {sum(counts)} as an int64 tensor, "
                              f"got {n!r} ({what})")
        mean = as_tensor(mean, f"{name} (mean)", mean_ref)
        var = as_tensor(var, f"{name} (var)", var_ref)
        rtol = 1e-5 if dtype == torch.float32 else 1e-10
        if not _close(mean, mean_ref, rtol):
            hint = "the mean is wrong"
            if _close(mean, means.double().mean(0), rtol):
                hint = "the mean is the plain average of the shards' means; weigh each by its count"
            elif not torch.isfinite(mean).all():
                hint = "the mean is not finite: a shard with count 0 must drop out, not divide by zero"
            raise CheckFailed(f"{name}: {hint} ({what})")
        if not _close(var, var_ref, rtol):
            hint = "the variance is wrong"
            if _close(var, m2s.double().sum(0) / sum(counts), rtol):
                hint = ("the spread of the shards' means around the overall mean is missing: "
                        "add sum(n_k * (mean_k - mean)**2) to the sum of the M2_k")
            elif _close(var, var_ref * sum(counts) / (sum(counts) - 1), rtol):
                hint = "this is the unbiased variance; batch norm normalizes with M2 / n"
            raise CheckFailed(f"{name}: {hint} ({what})")
        meta = [t.to("meta") for t in (counts_t, means, m2s)]
        try:
            fn(*meta)
        except Exception as e:  # noqa: BLE001 - any failure here means the values were needed
            raise CheckFailed(f"{name}: the function cannot run on shapes alone ({type(e).__name__}: "
                              f"{str(e)[:120]}): it needs the values of the tensors, for a boolean mask, "
                              f"an `if` on a tensor or a conversion to Python. On a GPU that waits for "
                              f"the device; give empty shards weight 0 instead ({what})") from None
    passed(name, f"{len(cases)} sets of shards, some empty, and on the meta device")


def _group_size(k: int, batch: int, enough: int) -> int:
    per = batch // k
    return next(g for g in range(1, k + 1) if k % g == 0 and (g * per >= enough or g == k))


def group_size(fn) -> None:
    """Check ``fn(k, batch, enough) -> G``: the smallest G that divides k and gives a group of G devices
    (``batch / k`` examples each) at least ``enough`` examples; k if none does."""
    name = "group_size"
    cases = [(16, 32, 8), (12, 48, 10), (8, 64, 4), (6, 12, 7), (10, 10, 3), (4, 8, 100)]
    for k, batch, enough in cases:
        what = f"k={k}, batch={batch}, enough={enough}"
        got = run(fn, k, batch, enough, name=name, what=what)
        want = _group_size(k, batch, enough)
        if got == want:
            continue
        per = batch // k
        if isinstance(got, int | float) and got == -(-enough // per) and k % want == 0:
            hint = ("the group must divide the devices evenly: take the smallest divisor of k that is at "
                    "least enough / (batch / k)")
        elif got == k and want != k:
            hint = "synchronizing every device is more than needed: take the smallest group that is enough"
        elif got == 1 or got == 0:
            hint = "each device holds batch / k examples; a group of G holds G times that"
        else:
            hint = "wrong group size"
        raise CheckFailed(f"{name}: {hint} ({what}): expected G = {want}, got {got!r}")
    passed(name, f"{len(cases)} cases, from one device enough to no group enough")


# ---------------------------------------------------------------------------------------------


def _crossover(channels, params, bn_values=None, grad_values=None, limit=1 << 22) -> int | None:
    """The smallest K >= 2 at which batch norm's values per process and step reach the gradients'."""
    bn_values = bn_values or (lambda k: ring_values(k, channels, params)["batch norm"])
    grad_values = grad_values or (lambda k: ring_values(k, channels, params)["gradients"])
    lo, hi = 2, 2
    while bn_values(hi) < grad_values(hi):  # the difference grows with K: double, then bisect
        if hi > limit:
            return None
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if bn_values(mid) >= grad_values(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _crossover_slips(channels: list[int], params: int) -> list[tuple[int | None, str]]:
    """The answers of the usual slips for one network, each with its hint."""
    c, layers = sum(channels), len(channels)

    def bn_values(gather, count=1, backward=True):
        return lambda k: gather(k) * (2 * c + count * layers) + (4 * (k - 1) / k * c if backward else 0)

    def slip(**kw):
        return _crossover(channels, params, **kw)

    return [
        (slip(bn_values=bn_values(lambda k: k - 1, backward=False)),
         "batch norm's backward all-reduce of 2C values per layer is missing"),
        (slip(bn_values=bn_values(lambda k: k - 1, count=0)),
         "the count is missing: each layer gathers 2C + 1 values (count, C means, C sums of squares)"),
        (slip(grad_values=lambda k: params),
         "a ring all-reduce of P values sends 2 (K - 1) / K * P per process, not P"),
        (slip(grad_values=lambda k: 2 * params),
         "a ring all-reduce of P values sends 2 (K - 1) / K * P per process: just under 2P"),
        (slip(bn_values=bn_values(lambda k: k)),  # the same as one less than the right K
         "one process too few: an all-gather sends K - 1 blocks per process (each process already "
         "holds its own), not K; and K is the first number of processes at which batch norm sends at "
         "least as much, not the last at which it sends less"),
    ]


def sync_crossover(fn) -> None:
    """Check ``fn(channels, params) -> K``: the smallest number of processes K >= 2 at which synchronized
    batch norm sends at least as many values per process and training step as the gradient
    all-reduce, for layers of ``channels`` (a list) and ``params`` parameters, with ring collectives."""
    name = "sync_crossover"
    cases = [([64, 64], 9098), ([16], 400), ([32, 64, 128], 120_000), ([256] * 20, 2_000_000)]
    got, want = [], []
    for channels, params in cases:
        shown = channels if len(channels) < 5 else f"[{channels[0]}] * {len(channels)}"
        what = f"channels={shown}, params={params}"
        answer = run(fn, list(channels), params, name=name, what=what)
        if answer is None:
            raise CheckFailed(f"{name}: the function returned None; did you forget `return`? ({what})")
        try:
            got.append(int(answer))
        except (TypeError, ValueError):
            raise CheckFailed(f"{name}: return a number of processes K, got {answer!r} ({what})") from None
        want.append(_crossover(channels, params))
    if got == want:
        passed(name, f"{len(cases)} networks, one layer of 16 channels to 20 layers of 256")
        return
    i = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
    channels, params = cases[i]
    detail = f"for channels={channels[:3]}{'...' if len(channels) > 3 else ''}, params={params}: " \
             f"expected K = {want[i]}, got {got[i]}"
    per_case = [_crossover_slips(ch, p) for ch, p in cases]
    for j, (_, hint) in enumerate(per_case[0]):
        if all(slips[j][0] == answer for slips, answer in zip(per_case, got, strict=True)):
            raise CheckFailed(f"{name}: {hint} ({detail})")
    raise CheckFailed(f"{name}: wrong number of processes ({detail})")


# ---------------------------------------------------------------------------------------------


def _normalize(x, eps, unbiased=False):
    return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=unbiased) + eps)


def ghost_norm(fn) -> None:
    """Check ``fn(x, ghost_size, eps) -> x_hat``: each run of ``ghost_size`` consecutive rows of ``x``
    (N, C) normalized with its own mean and biased variance, as GhostBatchNorm in training."""
    name = "ghost_norm"
    cases = [(12, 3, 4, 1e-5), (32, 5, 8, 1e-5), (16, 2, 2, 1e-3), (10, 4, 10, 1e-5)]
    for seed, (n, c, g, eps) in enumerate(cases):
        gen = generator(seed)
        # each run of g rows sits at its own offset and scale, so a slip shows
        x = torch.randn(n, c, generator=gen, dtype=torch.float64)
        x = x * torch.linspace(0.5, 3, n, dtype=torch.float64)[:, None] + torch.arange(n)[:, None] // g
        layer = GhostBatchNorm(c, g, eps=eps, affine=False, dtype=torch.float64)
        with torch.no_grad():
            ref = layer(x)
        what = f"x of shape {(n, c)}, ghost_size={g}, eps={eps}"
        out = as_tensor(run(fn, x.clone(), g, eps, name=name, what=what), name, ref)
        if _close(out, ref, 1e-6):
            continue
        ghosts = n // g
        strided = torch.empty_like(x)
        for j in range(ghosts):  # the slip: ghost j made of rows j, j + ghosts, j + 2 ghosts, ...
            strided[j::ghosts] = _normalize(x[j::ghosts], eps)
        mistakes = [
            (_normalize(x, eps), "the whole batch is normalized at once: normalize each run of ghost_size "
                                 "rows with its own statistics"),
            (strided, "the ghost batches interleave (rows j, j + N/g, ...): a ghost batch is ghost_size "
                      "consecutive rows, x.view(N // ghost_size, ghost_size, C)"),
            (torch.cat([_normalize(r, eps, unbiased=True) for r in x.split(g)]),
             "the variance is the unbiased one; normalize with the biased one (divided by ghost_size)"),
            (torch.cat([_normalize(r, 0.0) for r in x.split(g)]), "eps is missing: sqrt(var + eps)"),
        ]
        for wrong, hint in mistakes:
            if _close(out, wrong, 1e-6):
                raise CheckFailed(f"{name}: {hint} ({what})")
        raise CheckFailed(f"{name}: wrong output ({what}); expected each run of ghost_size rows "
                          f"normalized with its own mean and biased variance")
    passed(name, f"{len(cases)} batches, ghost batches of 2 to 10 rows")


def ghost_running(fn) -> None:
    """Check ``fn(x, ghost_size, running_mean, running_var, momentum) -> (new_mean, new_var)``: the
    running statistics after one training step of ghost batch norm on ``x`` (N, C)."""
    name = "ghost_running"
    cases = [(12, 3, 4, 0.1), (32, 2, 8, 0.3), (16, 4, 2, 0.5)]
    for seed, (n, c, g, momentum) in enumerate(cases):
        gen = generator(seed)
        x = torch.randn(n, c, generator=gen, dtype=torch.float64)
        x = x + torch.arange(n, dtype=torch.float64)[:, None] // g  # ghost batches at their own offsets
        mean0 = torch.randn(c, generator=gen, dtype=torch.float64)
        var0 = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5
        layer = GhostBatchNorm(c, g, momentum=momentum, affine=False, dtype=torch.float64)
        layer.running_mean.copy_(mean0)
        layer.running_var.copy_(var0)
        with torch.no_grad():
            layer(x)
        what = f"x of shape {(n, c)}, ghost_size={g}, momentum={momentum}"
        out = run(fn, x.clone(), g, mean0.clone(), var0.clone(), momentum, name=name, what=what)
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise CheckFailed(f"{name}: return a pair (new_mean, new_var), got {type(out).__name__} ({what})")
        new_mean = as_tensor(out[0], f"{name} (mean)", mean0)
        new_var = as_tensor(out[1], f"{name} (var)", var0)
        if _close(new_mean, layer.running_mean, 1e-9) and _close(new_var, layer.running_var, 1e-9):
            continue
        runs = x.view(n // g, g, c)

        def update(m, v, mom=momentum, mean0=mean0, var0=var0):
            return (1 - mom) * mean0 + mom * m, (1 - mom) * var0 + mom * v

        mistakes = [
            (update(x.mean(0), x.var(0)), "the variance is the whole batch's; average the ghost batches' "
                                          "variances (the spread between ghost batches is not in them)"),
            (update(runs.mean(1).mean(0), runs.var(1, unbiased=False).mean(0)),
             "the ghost variances are biased; the running variance stores the unbiased ones"),
            ((momentum * mean0 + (1 - momentum) * runs.mean(1).mean(0),
              momentum * var0 + (1 - momentum) * runs.var(1).mean(0)),
             "momentum is reversed: new = (1 - momentum) * old + momentum * batch (PyTorch's convention)"),
        ]
        for (m, v), hint in mistakes:
            if _close(new_mean, m, 1e-9) and _close(new_var, v, 1e-9):
                raise CheckFailed(f"{name}: {hint} ({what})")
        raise CheckFailed(f"{name}: wrong running statistics ({what}); expected the average over the "
                          f"ghost batches of their means and unbiased variances, blended in by momentum")
    passed(name, f"{len(cases)} batches, ghost batches of 2 to 8")


def _bounds(step, warmup, ramp, r_max, d_max) -> tuple[float, float]:
    layer = BatchRenorm(1, r_max=r_max, d_max=d_max, warmup=warmup, ramp=ramp, dtype=torch.float64)
    layer.num_batches_tracked.fill_(step)
    r, d = layer.bounds()
    return r.item(), d.item()


def renorm_bounds(fn) -> None:
    """Check ``fn(step, warmup, ramp, r_max, d_max) -> (r_bound, d_bound)``: the bounds of Batch
    Renormalization for the training step after ``step`` steps: 1 and 0 during the warm-up, then
    relaxed linearly over ``ramp`` steps to ``r_max`` and ``d_max``."""
    name = "renorm_bounds"
    cases = [(0, 10, 20, 3.0, 5.0), (9, 10, 20, 3.0, 5.0), (10, 10, 20, 3.0, 5.0), (15, 10, 20, 3.0, 5.0),
             (25, 10, 20, 3.0, 5.0), (30, 10, 20, 3.0, 5.0), (500, 10, 20, 3.0, 5.0), (7, 0, 14, 2.0, 1.0),
             (3, 5, 0, 3.0, 5.0), (5, 5, 0, 3.0, 5.0)]
    for step, warmup, ramp, r_max, d_max in cases:
        what = f"step={step}, warmup={warmup}, ramp={ramp}, r_max={r_max}, d_max={d_max}"
        out = run(fn, step, warmup, ramp, r_max, d_max, name=name, what=what)
        try:
            r, d = (float(v) for v in out)
        except (TypeError, ValueError):
            raise CheckFailed(f"{name}: return a pair (r_bound, d_bound), got {out!r} ({what})") from None
        want = _bounds(step, warmup, ramp, r_max, d_max)
        if abs(r - want[0]) < 1e-9 and abs(d - want[1]) < 1e-9:
            continue
        t_right = (want[1] / d_max) if d_max else 1.0  # how far along the ramp
        t_early = min(1.0, max(0.0, step / ramp)) if ramp else 1.0  # a ramp counted from step 0
        slips = [
            ((1 + t_early * (r_max - 1), t_early * d_max),
             "the ramp starts at step 0: it starts after the warm-up, at step `warmup`"),
            ((t_right * r_max, t_right * d_max),
             "the bound on r goes from 1 to r_max, 1 + t * (r_max - 1), not from 0: t * r_max"),
            ((1.0, 0.0), "the bounds never open: after the warm-up they relax toward r_max and d_max"),
            ((r_max, d_max), "the full bounds are applied from the start: during the warm-up the layer is "
                             "plain batch norm (r = 1, d = 0), then the bounds relax over `ramp` steps"),
        ]
        hint = next((h for (rs, ds), h in slips if abs(r - rs) < 1e-9 and abs(d - ds) < 1e-9),
                    "wrong bounds")
        raise CheckFailed(f"{name}: {hint} ({what}): expected {want}, got {(r, d)}")
    passed(name, f"{len(cases)} steps, in the warm-up, on the ramp and after it")


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
