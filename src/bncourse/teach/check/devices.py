"""Exercise checks of Chapter 8, batch norm across devices: how much of the batch's variance
per-device statistics see, merging K shards on the device, the diagnose exercise of per-device
statistics on tiny per-device batches, the number of devices at which synchronized batch norm sends
as much as the gradients, the size of a process group, and ghost batch norm's normalization and
running statistics. Every message comes in English and Chinese (``say``)."""

from __future__ import annotations

import copy
import math
import numbers

import torch

from ...lab.device import generator
from ...lab.distributed import counting_host_syncs, ring_values
from ...smallbatch import GhostBatchNorm
from ...sync import merge_moments
from .core import CheckFailed, as_tensor, passed, run, say

__all__ = ["ghost_norm", "ghost_running", "merge_on_device", "per_device_fix", "predicted",
           "sync_crossover", "within_fraction"]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=1e-9))


def predicted(name: str, guess, measured: float, *, low: float, high: float, explain: str,
              fmt: str = ".3g") -> None:
    """The *predict* exercises of Chapter 8: ``bn.check.prediction`` in both languages, its line
    wrapped to the page's column. Passes for any honest prediction in ``[low, high]``, and prints the
    gap to the run and ``explain``; fails only for a prediction not made (the stub, None, not a
    number, NaN) or one outside the range the quantity can take."""
    if guess is None or isinstance(guess, bool) or not isinstance(guess, numbers.Real) \
            or math.isnan(guess):
        raise CheckFailed(say(
            en=f"{name}: expected your prediction as a number, got {guess!r}; commit to one before "
               f"you run the measurement",
            zh=f"{name}：应给出一个数作为你的预测，得到的是 {guess!r}；请在运行测量之前先给出预测"))
    if not low <= guess <= high:
        raise CheckFailed(say(
            en=f"{name}: your prediction {guess:{fmt}} is outside [{low:{fmt}}, {high:{fmt}}], the range "
               f"this quantity can take here; reread the setup",
            zh=f"{name}：你的预测 {guess:{fmt}} 不在 [{low:{fmt}}, {high:{fmt}}] 之内，"
               f"这是该量在这里可能的取值范围；请重读实验设置"))
    gap = guess - measured
    if math.isclose(guess, measured, rel_tol=0.1, abs_tol=1e-12):
        how = say(en="spot on", zh="正中")
    elif gap > 0:
        how = say(en=f"above the run by {gap:{fmt}}", zh=f"比测量值高 {gap:{fmt}}")
    else:
        how = say(en=f"below the run by {-gap:{fmt}}", zh=f"比测量值低 {-gap:{fmt}}")
    passed(name, say(en=f"you predicted {guess:{fmt}}, the run measured {measured:{fmt}}: {how}. {explain}",
                      zh=f"你预测 {guess:{fmt}}，实测 {measured:{fmt}}：{how}。{explain}"))


# ---------------------------------------------------------------------------------------------


def _within(m: int, batch: int) -> float:
    """E[biased variance of a shard of m] / E[biased variance of the batch], i.i.d. examples."""
    return (m - 1) / m * batch / (batch - 1)


def _simulated_within(m: int, batch: int, trials: int = 4000) -> float:
    """The same ratio measured: ``trials`` batches of standard normal values cut into shards of m."""
    x = torch.randn(trials, batch, generator=generator(batch * 100 + m), dtype=torch.float64)
    per_device = x.view(trials, batch // m, m).var(2, unbiased=False).mean()
    return (per_device / x.var(1, unbiased=False).mean()).item()


def within_fraction(fn) -> None:
    """Check ``fn(m, batch) -> float``: the expected biased variance of a device's shard of ``m``
    examples divided by the expected biased variance of the whole batch of ``batch`` examples (i.i.d.
    examples), the fraction of the batch's variance that per-device statistics see on average:
    ``(m - 1) / m * batch / (batch - 1)``. Compared with the exact value and a simulation."""
    name = "within_fraction"
    cases = [(2, 32), (4, 32), (3, 12), (1, 8), (16, 16), (5, 40), (2, 4)]
    for m, batch in cases:
        what = f"m={m}, batch={batch}"
        out = run(fn, m, batch, name=name, what=what)
        try:
            got = float(out)
        except (TypeError, ValueError):
            raise CheckFailed(say(en=f"{name}: return one number, got {out!r} ({what})",
                                  zh=f"{name}：应返回一个数，得到的是 {out!r}（{what}）")) from None
        want = _within(m, batch)
        if abs(got - want) < 1e-6:  # float32 answers round to ~1e-7
            continue
        measured = _simulated_within(m, batch)
        slips = [
            ((m - 1) / m,
             say(en="this compares a device's variance with the population's sigma^2; the whole "
                    "batch's biased variance is itself short of sigma^2, by the factor (B - 1) / B: "
                    "divide by it too",
                 zh="这是设备方差与总体方差 sigma^2 之比；整批的有偏方差本身也比 sigma^2 小，"
                    "差一个因子 (B - 1) / B：还要除以它")),
            ((m - 1) / m * (batch - 1) / batch,
             say(en="the batch's factor is upside down: E[var_B] = (B - 1) / B * sigma^2, so divide by it",
                 zh="整批的因子颠倒了：E[var_B] = (B - 1) / B * sigma^2，所以要除以它")),
            (m / batch,
             say(en="m / B is the device's share of the examples, not of the variance: a device's variance "
                    "misses only the spread of the devices' means",
                 zh="m / B 是设备所占样本的比例，不是方差的比例：设备的方差只缺少各设备均值之间的离散")),
            (m / (m - 1) * (batch - 1) / batch if m > 1 else float("nan"),
             say(en="upside down: a shard's variance is the smaller one, so the fraction is at most 1",
                 zh="颠倒了：分片的方差较小，所以这个比例不超过 1")),
        ]
        hint = next((h for v, h in slips if abs(got - v) < 1e-6),
                    say(en="wrong fraction", zh="比例不对"))
        raise CheckFailed(say(
            en=f"{name}: {hint} ({what}): expected {want:.4f}, got {got:.4f}; a simulation of 4,000 batches "
               f"measures {measured:.4f}",
            zh=f"{name}：{hint}（{what}）：应为 {want:.4f}，得到 {got:.4f}；"
               f"对 4000 个批的模拟测得 {measured:.4f}"))
    passed(name, say(en=f"{len(cases)} shard and batch sizes, from shards of 1 to the whole batch",
                     zh=f"{len(cases)} 组分片与批大小，从 1 个样本的分片到整批"))


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
            raise CheckFailed(say(
                en=f"{name}: return a triple (n, mean, var), got {type(out).__name__} ({what})",
                zh=f"{name}：应返回三元组 (n, mean, var)，得到的是 {type(out).__name__}（{what}）"))
        if syncs:
            calls = ", ".join(f".{k}()" if not k.startswith("__") else k.strip("_") + "(tensor)"
                              for k in sorted(syncs))
            raise CheckFailed(say(
                en=f"{name}: the function brings values to Python ({calls}); on a GPU each makes the CPU "
                   f"wait for the device. Keep n a tensor ({what})",
                zh=f"{name}：函数把张量的值取回了 Python（{calls}）；在 GPU 上每一次都让 CPU 等待设备。"
                   f"让 n 保持为张量（{what}）"))
        n, mean, var = out
        if not isinstance(n, torch.Tensor) or n.dtype != torch.int64 or int(n) != sum(counts):
            raise CheckFailed(say(
                en=f"{name}: n should be the total count {sum(counts)} as an int64 tensor, got {n!r} "
                   f"({what})",
                zh=f"{name}：n 应为总数 {sum(counts)}，类型为 int64 张量，得到的是 {n!r}（{what}）"))
        mean = as_tensor(mean, f"{name} (mean)", mean_ref)
        var = as_tensor(var, f"{name} (var)", var_ref)
        rtol = 1e-5 if dtype == torch.float32 else 1e-10
        if not _close(mean, mean_ref, rtol):
            hint = say(en="the mean is wrong", zh="均值不对")
            if _close(mean, means.double().mean(0), rtol):
                hint = say(en="the mean is the plain average of the shards' means; weigh each by its count",
                           zh="均值是各分片均值的简单平均；应按各分片的样本数加权")
            elif not torch.isfinite(mean).all():
                hint = say(en="the mean is not finite: a shard with count 0 must drop out, not divide "
                              "by zero",
                           zh="均值不是有限数：样本数为 0 的分片应当不起作用，而不是除以零")
            raise CheckFailed(say(en=f"{name}: {hint} ({what})", zh=f"{name}：{hint}（{what}）"))
        if not _close(var, var_ref, rtol):
            hint = say(en="the variance is wrong", zh="方差不对")
            if _close(var, m2s.double().sum(0) / sum(counts), rtol):
                hint = say(en="the spread of the shards' means around the overall mean is missing: "
                              "add sum(n_k * (mean_k - mean)**2) to the sum of the M2_k",
                           zh="缺少各分片均值围绕总体均值的离散：在 M2_k 之和上加上 "
                              "sum(n_k * (mean_k - mean)**2)")
            elif _close(var, var_ref * sum(counts) / (sum(counts) - 1), rtol):
                hint = say(en="this is the unbiased variance; batch norm normalizes with M2 / n",
                           zh="这是无偏方差；批标准化用 M2 / n 标准化")
            raise CheckFailed(say(en=f"{name}: {hint} ({what})", zh=f"{name}：{hint}（{what}）"))
        meta = [t.to("meta") for t in (counts_t, means, m2s)]
        try:
            fn(*meta)
        except Exception as e:  # noqa: BLE001 - any failure here means the values were needed
            raise CheckFailed(say(
                en=f"{name}: the function cannot run on shapes alone ({type(e).__name__}: {str(e)[:120]}): "
                   f"it needs the values of the tensors, for a boolean mask, an `if` on a tensor or a "
                   f"conversion to Python. On a GPU that waits for the device; give empty shards weight 0 "
                   f"instead ({what})",
                zh=f"{name}：函数无法只靠形状运行（{type(e).__name__}: {str(e)[:120]}）：它需要张量的值，"
                   f"用于布尔掩码、对张量的 `if` 或转换成 Python 数。在 GPU 上这要等待设备；"
                   f"改为给空分片权重 0（{what}）")) from None
    passed(name, say(en=f"{len(cases)} sets of shards, some empty, and on the meta device",
                     zh=f"{len(cases)} 组分片，其中有空分片，并在 meta 设备上运行"))


# ---------------------------------------------------------------------------------------------


def _norm_group(layer: torch.nn.Module, rows: int = 32) -> int | None:
    """How many consecutive rows of a training batch of ``rows`` the layer normalizes together: the
    smallest g such that every run of g rows of its output has the same mean (beta), for an input
    whose every row sits at its own offset; None if no g does."""
    probe = copy.deepcopy(layer).train()
    dtype = next((b.dtype for b in probe.buffers() if b.is_floating_point()), torch.float64)
    c = probe.num_features
    x = torch.randn(rows, c, generator=generator(7), dtype=torch.float64)
    x = (x + 3 * torch.arange(rows, dtype=torch.float64)[:, None]).to(dtype)
    with torch.no_grad():
        out = probe(x).double()
    for g in (1, 2, 4, 8, 16, 32):
        means = out.view(rows // g, g, c).mean(1)
        if (means - means[0]).abs().max() <= 1e-4 * (1 + out.abs().max()):
            return g
    return None


def per_device_fix(fn, seeds=(11, 12, 13)) -> None:
    """Check the diagnose exercise of per-device statistics on tiny per-device batches:
    ``fn(seed) -> model``, the fixed training script of 08a (a batch of 32 on 16 devices), returns the
    trained network. Its batch norm layers must normalize at least 8 examples together in training (a
    synchronized batch, or groups of devices), and it must reach the accuracy of batch norm on the
    whole batch (over 90 % on average over three seeds; per-device statistics on 2 examples reach
    about 65 %)."""
    from ...lab.data import digits
    from ...lab.trainer import evaluate

    name = "per_device_fix"
    raw = digits()
    accs = []
    for seed in seeds:
        what = say(en=f"seed {seed}", zh=f"随机种子 {seed}")
        model = run(fn, seed, name=name, what=what)
        if not isinstance(model, torch.nn.Module):
            raise CheckFailed(say(
                en=f"{name}: return the trained network (an nn.Module), got {type(model).__name__} ({what})",
                zh=f"{name}：应返回训练好的网络（nn.Module），得到的是 {type(model).__name__}（{what}）"))
        norms = [m for m in model.modules() if hasattr(m, "running_mean") and hasattr(m, "num_features")]
        if not norms:
            raise CheckFailed(say(
                en=f"{name}: the network has no batch norm layer left; the fix keeps batch norm and gives it "
                   f"enough examples ({what})",
                zh=f"{name}：网络里已经没有批标准化层；修复应当保留批标准化，并让它看到足够多的样本（{what}）"))
        for layer in norms:
            try:
                g = _norm_group(layer)
            except Exception as e:  # noqa: BLE001 - the learner's layer may not run on a batch of 32
                raise CheckFailed(say(
                    en=f"{name}: {type(layer).__name__} does not run on a training batch of 32 "
                       f"({type(e).__name__}: {str(e)[:100]}) ({what})",
                    zh=f"{name}：{type(layer).__name__} 无法在训练模式下处理 32 个样本的批"
                       f"（{type(e).__name__}: {str(e)[:100]}）（{what}）")) from None
            if g is None or g < 8:
                got = say(en=f"runs of {g} examples", zh=f"每 {g} 个样本") if g else \
                    say(en="not with batch statistics", zh="没有用批统计量")
                raise CheckFailed(say(
                    en=f"{name}: a batch norm layer still normalizes {got} in training: each device's "
                       f"statistics come from too few examples. Synchronize the statistics over the devices "
                       f"(the whole batch), or over groups of devices that hold at least 8 examples ({what})",
                    zh=f"{name}：训练时仍有批标准化层{got}一组做标准化：每个设备的统计量来自太少的样本。"
                       f"应在设备之间同步统计量（整批），或在至少合计 8 个样本的设备组内同步（{what}）"))
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            acc = evaluate(model, (raw.x_test / 16).to(dtype), raw.y_test)[1]
        accs.append(acc)
        if acc < 0.8:
            raise CheckFailed(say(
                en=f"{name}: the fixed network reaches only {acc:.1%} test accuracy ({what}); batch norm on "
                   f"the whole batch reaches about 97%. Was it trained as the buggy script trains it?",
                zh=f"{name}：修复后的网络测试准确率只有 {acc:.1%}（{what}）；在整批上做批标准化约为 97%。"
                   f"它是否按有缺陷的脚本那样训练过？"))
    mean = sum(accs) / len(accs)
    if mean < 0.9:
        raise CheckFailed(say(
            en=f"{name}: the fixed network reaches {mean:.1%} test accuracy on average over "
               f"{len(seeds)} seeds; "
               f"batch norm on the whole batch reaches about 97%",
            zh=f"{name}：修复后的网络在 {len(seeds)} 个随机种子上的平均测试准确率为 {mean:.1%}；"
               f"在整批上做批标准化约为 97%"))
    passed(name, say(en=f"batch norm sees 8 or more examples; test accuracy {mean:.1%} on average over "
                        f"{len(seeds)} new seeds",
                     zh=f"批标准化至少看到 8 个样本；在 {len(seeds)} 个新的随机种子上"
                        f"平均测试准确率 {mean:.1%}"))


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
         say(en="batch norm's backward all-reduce of 2C values per layer is missing",
             zh="漏掉了批标准化反向传播中每层 2C 个值的 all-reduce")),
        (slip(bn_values=bn_values(lambda k: k - 1, count=0)),
         say(en="the count is missing: each layer gathers 2C + 1 values (count, C means, C sums of squares)",
             zh="漏掉了样本数：每层 all-gather 2C + 1 个值（样本数、C 个均值、C 个平方和）")),
        (slip(grad_values=lambda k: params),
         say(en="a ring all-reduce of P values sends 2 (K - 1) / K * P per process, not P",
             zh="P 个值的环形 all-reduce 每个进程发送 2 (K - 1) / K * P 个值，而不是 P")),
        (slip(grad_values=lambda k: 2 * params),
         say(en="a ring all-reduce of P values sends 2 (K - 1) / K * P per process: just under 2P",
             zh="P 个值的环形 all-reduce 每个进程发送 2 (K - 1) / K * P 个值：略少于 2P")),
        (slip(bn_values=bn_values(lambda k: k)),  # the same as one less than the right K
         say(en="one process too few: an all-gather sends K - 1 blocks per process (each process already "
                "holds its own), not K; and K is the first number of processes at which batch norm sends at "
                "least as much, not the last at which it sends less",
             zh="少了一个进程：all-gather 每个进程发送 K - 1 块（每个进程已有自己的那块），不是 K 块；"
                "而且 K 是批标准化发送量首次不少于梯度的进程数，不是发送量仍较少的最后一个")),
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
            raise CheckFailed(say(en=f"{name}: the function returned None; did you forget `return`? ({what})",
                                  zh=f"{name}：函数返回了 None；是不是忘了 `return`？（{what}）"))
        try:
            got.append(int(answer))
        except (TypeError, ValueError):
            raise CheckFailed(say(en=f"{name}: return a number of processes K, got {answer!r} ({what})",
                                  zh=f"{name}：应返回进程数 K，得到的是 {answer!r}（{what}）")) from None
        want.append(_crossover(channels, params))
    if got == want:
        passed(name, say(en=f"{len(cases)} networks, one layer of 16 channels to 20 layers of 256",
                         zh=f"{len(cases)} 个网络，从一层 16 个通道到 20 层各 256 个通道"))
        return
    i = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
    channels, params = cases[i]
    shown = f"channels={channels[:3]}{'...' if len(channels) > 3 else ''}, params={params}"
    detail = say(en=f"for {shown}: expected K = {want[i]}, got {got[i]}",
                 zh=f"{shown}：应为 K = {want[i]}，得到 {got[i]}")
    per_case = [_crossover_slips(ch, p) for ch, p in cases]
    for j, (_, hint) in enumerate(per_case[0]):
        if all(slips[j][0] == answer for slips, answer in zip(per_case, got, strict=True)):
            raise CheckFailed(say(en=f"{name}: {hint} ({detail})", zh=f"{name}：{hint}（{detail}）"))
    raise CheckFailed(say(en=f"{name}: wrong number of processes ({detail})",
                          zh=f"{name}：进程数不对（{detail}）"))


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
            (_normalize(x, eps),
             say(en="the whole batch is normalized at once: normalize each run of ghost_size rows with its "
                    "own statistics",
                 zh="整批被一次标准化了：每 ghost_size 行应当用它们自己的统计量标准化")),
            (strided,
             say(en="the ghost batches interleave (rows j, j + N/g, ...): a ghost batch is ghost_size "
                    "consecutive rows, x.view(N // ghost_size, ghost_size, C)",
                 zh="幽灵批是交错取的（第 j、j + N/g、…… 行）：一个幽灵批是连续的 ghost_size 行，"
                    "x.view(N // ghost_size, ghost_size, C)")),
            (torch.cat([_normalize(r, eps, unbiased=True) for r in x.split(g)]),
             say(en="the variance is the unbiased one; normalize with the biased one (divided by ghost_size)",
                 zh="用的是无偏方差；应当用有偏方差（除以 ghost_size）标准化")),
            (torch.cat([_normalize(r, 0.0) for r in x.split(g)]),
             say(en="eps is missing: sqrt(var + eps)", zh="漏掉了 eps：sqrt(var + eps)")),
        ]
        for wrong, hint in mistakes:
            if _close(out, wrong, 1e-6):
                raise CheckFailed(say(en=f"{name}: {hint} ({what})", zh=f"{name}：{hint}（{what}）"))
        raise CheckFailed(say(
            en=f"{name}: wrong output ({what}); expected each run of ghost_size rows normalized with its own "
               f"mean and biased variance",
            zh=f"{name}：输出不对（{what}）；应当把每 ghost_size 行用它们自己的均值和有偏方差标准化"))
    passed(name, say(en=f"{len(cases)} batches, ghost batches of 2 to 10 rows",
                     zh=f"{len(cases)} 个批，幽灵批为 2 到 10 行"))


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
            raise CheckFailed(say(
                en=f"{name}: return a pair (new_mean, new_var), got {type(out).__name__} ({what})",
                zh=f"{name}：应返回一对 (new_mean, new_var)，得到的是 {type(out).__name__}（{what}）"))
        new_mean = as_tensor(out[0], f"{name} (mean)", mean0)
        new_var = as_tensor(out[1], f"{name} (var)", var0)
        if _close(new_mean, layer.running_mean, 1e-9) and _close(new_var, layer.running_var, 1e-9):
            continue
        runs = x.view(n // g, g, c)

        def update(m, v, mom=momentum, mean0=mean0, var0=var0):
            return (1 - mom) * mean0 + mom * m, (1 - mom) * var0 + mom * v

        mistakes = [
            (update(x.mean(0), x.var(0)),
             say(en="the variance is the whole batch's; average the ghost batches' variances (the spread "
                    "between ghost batches is not in them)",
                 zh="用的是整批的方差；应对各幽灵批的方差取平均（幽灵批之间的离散不在其中）")),
            (update(runs.mean(1).mean(0), runs.var(1, unbiased=False).mean(0)),
             say(en="the ghost variances are biased; the running variance stores the unbiased ones",
                 zh="幽灵批的方差用了有偏的；滑动平均方差存的是无偏方差")),
            ((momentum * mean0 + (1 - momentum) * runs.mean(1).mean(0),
              momentum * var0 + (1 - momentum) * runs.var(1).mean(0)),
             say(en="momentum is reversed: new = (1 - momentum) * old + momentum * batch (PyTorch's "
                    "convention)",
                 zh="动量反了：new = (1 - momentum) * old + momentum * batch（PyTorch 的约定）")),
        ]
        for (m, v), hint in mistakes:
            if _close(new_mean, m, 1e-9) and _close(new_var, v, 1e-9):
                raise CheckFailed(say(en=f"{name}: {hint} ({what})", zh=f"{name}：{hint}（{what}）"))
        raise CheckFailed(say(
            en=f"{name}: wrong running statistics ({what}); expected the average over the ghost batches of "
               f"their means and unbiased variances, blended in by momentum",
            zh=f"{name}：滑动平均统计量不对（{what}）；应为各幽灵批的均值和无偏方差的平均，按动量混入"))
    passed(name, say(en=f"{len(cases)} batches, ghost batches of 2 to 8",
                     zh=f"{len(cases)} 个批，幽灵批为 2 到 8 行"))
