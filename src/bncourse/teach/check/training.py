"""Exercise checks of Chapter 6's training pages: how wide a layer must be for dropout's variance
shift to fade (06e, a *derive* exercise); on fine-tuning (06g), a frozen batch-norm layer, training
with batch norm held in eval mode, and adapting a network's batch-norm statistics to a new scanner
(the *diagnose* exercise).

Every message comes in English and Chinese (``BNCOURSE_LANG``).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable

import torch
from torch import nn

from ...lab.device import generator, seed_offset, shifted
from ...layers import bn_layers
from .core import CheckFailed, channel_data, passed, run, say

__all__ = ["fixed_adapt", "frozen_batch_norm", "train_with_frozen_bn", "width_for_shift"]


# ---------------------------------------------------------------------------------------------
# 06e: the width at which dropout's variance shift fades


def _ratio(d: int, rho: float, mean: float, var: float, p: float, *, noise_second: bool = True,
           keep: bool = False, signal: str = "exact") -> float:
    """Test over training variance of ``y = w * sum_j m_j h_j`` for ``d`` units of equal mean and
    variance and pairwise correlation ``rho``; the keywords give the usual mistakes."""
    q = (1 - p) / p if keep else p / (1 - p)
    per_unit = {"exact": 1 + (d - 1) * rho, "squared": d * rho}[signal]
    test = var * per_unit
    noise = q * (var + mean**2 if noise_second else var)
    return test / (test + noise)


def _smallest(target: float, rho: float, mean: float, var: float, p: float, **mistake) -> int | None:
    """The smallest width ``d >= 1`` at which the ratio reaches ``target`` (None past 10**7)."""
    lo, hi = 1, 1
    while _ratio(hi, rho, mean, var, p, **mistake) < target:
        lo, hi = hi, hi * 2
        if hi > 10**7:
            return None
    if _ratio(lo, rho, mean, var, p, **mistake) >= target:
        return lo
    while hi - lo > 1:     # the ratio grows with d: bisect between lo (below) and hi (at or above)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _ratio(mid, rho, mean, var, p, **mistake) >= target else (mid, hi)
    return hi


def _exact(d: int, rho: float, mean: float, var: float, p: float) -> float:
    """The same ratio from the general formula, ``w^T S w / (w^T S w + p/(1-p) sum w_j^2 E[h_j^2])``
    with an explicit covariance matrix ``S`` and equal weights: the closed form's witness."""
    cov = torch.full((d, d), rho * var, dtype=torch.float64)
    cov.diagonal().fill_(var)
    w = torch.full((d,), 0.3, dtype=torch.float64)
    test = (w @ cov @ w).item()
    noise = p / (1 - p) * (w**2 * (torch.diagonal(cov) + mean**2)).sum().item()
    return test / (test + noise)


# (target, rho, mean, var, p): a wide layer, a nearly independent one, a narrow answer, dropout at
# p = 0.2, and a target below the single unit's ratio (width 1 is enough).
WIDTH_CASES = [(0.87, 0.05, 0.45, 0.34, 0.5), (0.77, 0.013, 1.0, 0.55, 0.5), (0.8, 0.3, 0.2, 1.0, 0.3),
               (0.93, 0.021, 0.5, 0.25, 0.2), (0.3, 0.1, 0.4, 0.34, 0.5)]


def width_for_shift(fn: Callable) -> None:
    """Check ``fn(target, rho, mean, var, p) -> d``: the smallest number of units ``d`` (equal weights,
    each of mean ``mean`` and variance ``var``, every pair correlated by ``rho``), each through its own
    dropout mask with drop probability ``p``, whose sum keeps at least the fraction ``target`` of its
    training variance at test time."""
    name = "width_for_shift"
    for target, rho, mean, var, p in WIDTH_CASES:
        what = say(en=f"target {target}, rho {rho}, mean {mean}, variance {var}, p = {p}",
                   zh=f"target {target}，rho {rho}，均值 {mean}，方差 {var}，p = {p}")
        got = run(fn, target, rho, mean, var, p, name=name, what=what)
        ref = _smallest(target, rho, mean, var, p)
        assert ref is not None and _exact(ref, rho, mean, var, p) >= target - 1e-12
        assert ref == 1 or _exact(ref - 1, rho, mean, var, p) < target
        try:
            value = float(got)
        except (TypeError, ValueError):
            raise CheckFailed(say(
                en=f"{name}: expected a whole number of units, got {type(got).__name__} ({what})",
                zh=f"{name}：应返回单元个数（一个整数），得到的是 {type(got).__name__}（{what}）")) from None
        if not math.isfinite(value) or abs(value - round(value)) > 1e-9:
            raise CheckFailed(say(
                en=f"{name}: expected a whole number of units, got {value!r} ({what}): the smallest "
                   f"integer width at which the ratio reaches the target; round up",
                zh=f"{name}：应返回单元个数（整数），得到 {value!r}（{what}）：要的是比值达到目标的"
                   f"最小整数宽度，请向上取整"))
        d = round(value)
        if d == ref:
            continue
        mistakes = [
            (_smallest(target, rho, mean, var, p, noise_second=False),
             "the masks' noise ignores the means: a mask multiplies the whole unit, so its noise is "
             "p / (1 - p) times the second moment var + mean^2, not the variance alone",
             "掩码的噪声忽略了均值：掩码乘的是整个单元，所以噪声是 p / (1 - p) 乘以二阶矩 var + mean^2，"
             "而不只是方差"),
            (_smallest(target, rho, mean, var, p, keep=True),
             "p is the probability of DROPPING a unit: a mask's variance is p / (1 - p)",
             "p 是丢弃一个单元的概率：掩码的方差是 p / (1 - p)"),
            (_smallest(target, rho, mean, var, p, signal="squared"),
             "the signal's variance is missing the units' own variances: the sum of d units has "
             "variance d var + d (d - 1) rho var, not d^2 rho var",
             "信号的方差漏掉了各单元自身的方差：d 个单元之和的方差是 d var + d (d - 1) rho var，"
             "而不是 d^2 rho var"),
        ]
        for wrong, en, zh in mistakes:
            if wrong is not None and d == wrong and wrong != ref:
                raise CheckFailed(say(en=f"{name}: {en} ({what})", zh=f"{name}：{zh}（{what}）"))
        if d == ref - 1:
            raise CheckFailed(say(
                en=f"{name}: {d} units keep only {_exact(d, rho, mean, var, p):.4f} of the variance, "
                   f"below the target ({what}): round the width up, not down",
                zh=f"{name}：{d} 个单元只保留了 {_exact(d, rho, mean, var, p):.4f} 的方差，低于目标"
                   f"（{what}）：宽度要向上取整，不是向下"))
        if d == ref + 1 or (ref == 1 and d < 1):
            raise CheckFailed(say(
                en=f"{name}: a width of {ref} already keeps {_exact(ref, rho, mean, var, p):.4f} of the "
                   f"variance ({what}); return the smallest width that reaches the target (at least 1)",
                zh=f"{name}：{ref} 个单元已经保留了 {_exact(ref, rho, mean, var, p):.4f} 的方差"
                   f"（{what}）；请返回达到目标的最小宽度（至少为 1）"))
        raise CheckFailed(say(
            en=f"{name}: expected {ref} units, got {d} ({what}); with d equal weights the signal's "
               f"variance is d var (1 + (d - 1) rho) and the masks' noise d p / (1 - p) (var + mean^2)",
            zh=f"{name}：应为 {ref} 个单元，得到 {d}（{what}）；权重相等时，信号的方差是 "
               f"d var (1 + (d - 1) rho)，掩码的噪声是 d p / (1 - p) (var + mean^2)"))
    passed(name, say(en="the correlated part grows with d^2, the masks' noise with d",
                     zh="相关部分随 d^2 增长，掩码的噪声只随 d 增长"))


# ---------------------------------------------------------------------------------------------
# 06g: adapting batch norm's statistics to a new scanner (diagnose)


def _scanner(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Another scanner than the page's: less contrast, a lighter background, more noise."""
    return 0.4 * x + 0.35 + 0.15 * torch.randn(x.shape, generator=generator(seed), dtype=x.dtype)


@functools.cache
def _adapt_task(offset: int, seed: int = 61):
    """A source network (digits 0-4, 150 steps of SGD) and the new scanner's unlabelled images and
    labelled test images, on the CPU; ``offset`` (the seed offset) keys the cache. Read-only: copy
    what you change."""
    from ...lab import data as bdata
    from ...lab import models
    from ...lab.trainer import train

    raw = bdata.digits()
    old_train, old_test = raw.y_train < 5, raw.y_test < 5
    x_train, x_test = raw.x_train / 16, raw.x_test / 16
    source = bdata.Split(x_train[old_train], raw.y_train[old_train], x_test[old_test], raw.y_test[old_test])
    runs = train(lambda: models.mlp([64, 128, 128, 10], norm="bn"), source, 150, 0.1, seeds=[seed],
                 batch_size=32, progress=False)
    images = _scanner(source.x_train, seed + 1)
    test = _scanner(source.x_test, seed + 2), source.y_test
    return runs.models[0].cpu(), images, test


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def _norms(model: nn.Module) -> list[nn.Module]:
    return bn_layers(model)


def fixed_adapt(fn: Callable) -> None:
    """Check ``fn(model, images) -> model``: the network's batch-norm statistics adapted to the
    unlabelled ``images`` of a new scanner (no weight changed), returned ready for testing (batch
    norm in eval mode), so that its accuracy on the new scanner's test images comes back."""
    name = "fixed_adapt"
    source, images, (x_test, y_test) = _adapt_task(seed_offset())
    source = copy.deepcopy(source).eval()
    reference = copy.deepcopy(source)
    from ...lab.inference import recompute_bn_stats

    recompute_bn_stats(reference, images)
    held = _accuracy(source, x_test, y_test)
    best = _accuracy(reference, x_test, y_test)
    model = copy.deepcopy(source)
    params = {k: v.clone() for k, v in model.named_parameters()}
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in _norms(model)]
    what = say(en="a new scanner's unlabelled images", zh="新扫描仪的无标签图像")
    out = run(fn, model, images.clone(), name=name, what=what)
    if out is None:
        out = model
    if not isinstance(out, nn.Module):
        raise CheckFailed(say(en=f"{name}: return the adapted model, as buggy_adapt does, got "
                                 f"{type(out).__name__}",
                              zh=f"{name}：请像 buggy_adapt 一样返回适配后的模型，得到的是 "
                                 f"{type(out).__name__}"))
    norms = _norms(out)
    if len(norms) != len(stats):
        raise CheckFailed(say(en=f"{name}: the returned model has {len(norms)} batch-norm layers, "
                                 f"the network had {len(stats)}; adapt the network, do not rebuild it",
                              zh=f"{name}：返回的模型有 {len(norms)} 个批标准化层，而原网络有 "
                                 f"{len(stats)} 个；请适配原网络，不要重建它"))
    moved = [k for k, v in out.named_parameters() if k in params and not torch.equal(v, params[k])]
    if moved:
        raise CheckFailed(say(
            en=f"{name}: it changed {moved[0]}: the new scanner's images come without labels, and "
               f"the weights, gamma and beta are right as they are; only the running statistics "
               f"should move",
            zh=f"{name}：它改动了 {moved[0]}：新扫描仪的图像没有标签，权重、gamma 和 beta 本身都没问题；"
               f"只有滑动平均统计量应该改变"))
    if any(m.training for m in norms):
        raise CheckFailed(say(
            en=f"{name}: the model comes back with batch norm in training mode: at test time it would "
               f"normalize every test batch by its own statistics (and fail on a batch of one). Switch "
               f"to eval mode once the statistics are adapted",
            zh=f"{name}：返回的模型中批标准化仍处于训练模式：测试时它会用每个测试批自己的统计量做"
               f"标准化（批里只有一个样本时还会出错）。统计量适配好之后请切换到评估模式"))
    if all(torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
           for m, (mean, var) in zip(norms, stats, strict=True)):
        raise CheckFailed(say(
            en=f"{name}: the running statistics did not move, so the network still normalizes with "
               f"the old scanner's: in eval mode a forward pass never updates them. Pass the images "
               f"in training mode (under torch.no_grad()), then switch to eval mode",
            zh=f"{name}：滑动平均统计量没有变，网络仍在用旧扫描仪的统计量做标准化：评估模式下前向传播"
               f"从不更新它们。请在训练模式下（在 torch.no_grad() 中）把图像送进网络，然后再切换到"
               f"评估模式"))
    errors = []
    for m, ref in zip(norms, _norms(reference), strict=True):
        errors.append((m.running_var / ref.running_var - 1).abs().mean().item())
    worst = max(errors)
    accuracy = _accuracy(out, x_test, y_test)
    if worst > 0.1:
        layer = errors.index(worst) + 1
        raise CheckFailed(say(
            en=f"{name}: the running statistics moved only part of the way to the new scanner's "
               f"(layer {layer}'s running variance is off by {worst:.0%} on average from the images' "
               f"own; test accuracy {accuracy:.1%}, against {best:.1%} with exact statistics). "
               f"With momentum 0.1 each batch moves them a tenth of the way, and {len(images)} "
               f"images are only a few batches: pass them several times, or set every layer's "
               f"momentum to None for a plain average (of the batches since its last "
               f"reset_running_stats(): the source's count too, unless you reset it)",
            zh=f"{name}：滑动平均统计量只向新扫描仪的统计量移动了一部分（第 {layer} 层的滑动平均方差与这些"
               f"图像自身的方差平均相差 {worst:.0%}；测试准确率 {accuracy:.1%}，用精确统计量时为 "
               f"{best:.1%}）。动量为 0.1 时每个批只把它们推动十分之一，而 {len(images)} 张图像只有"
               f"几个批：请多遍历几次，或把每层的 momentum 设为 None，取简单平均（平均的是上次 "
               f"reset_running_stats() 以来的所有批：不重置的话，源数据上的批也算在内）"))
    if accuracy < best - 0.02:
        raise CheckFailed(say(
            en=f"{name}: test accuracy on the new scanner is {accuracy:.1%}, against {best:.1%} with "
               f"exact statistics of its images (and {held:.1%} with the old ones)",
            zh=f"{name}：在新扫描仪上的测试准确率为 {accuracy:.1%}，而用这些图像的精确统计量时为 "
               f"{best:.1%}（用旧统计量时为 {held:.1%}）"))
    passed(name, say(en=f"test accuracy on a new scanner {held:.1%} -> {accuracy:.1%}, no label used",
                     zh=f"新扫描仪上的测试准确率 {held:.1%} -> {accuracy:.1%}，没有用任何标签"))


# ---------------------------------------------------------------------------------------------
# 06g: a frozen batch-norm layer, and training with batch norm held in eval mode

EPS = 1e-3  # large enough that forgetting it shows


def _construct(cls, name: str, *args, **kw) -> nn.Module:
    call_args = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kw.items())])
    layer = run(lambda: cls(*args, **kw), name=name, what=f"{cls.__name__}({call_args})")
    if not isinstance(layer, nn.Module):
        raise CheckFailed(say(en=f"{name}: the layer should be a torch.nn.Module, got {type(layer).__name__}",
                              zh=f"{name}：这个层应该是 torch.nn.Module，得到的是 {type(layer).__name__}"))
    return layer


def _output(value, name: str, like: torch.Tensor, mode: str) -> torch.Tensor:
    if value is None:
        raise CheckFailed(say(en=f"{name}: the output after .{mode}() is None; did you forget `return`?",
                              zh=f"{name}：.{mode}() 之后的输出是 None；是不是忘了 `return`？"))
    t = torch.as_tensor(value).detach().double().cpu()
    if t.shape != like.shape:
        raise CheckFailed(say(en=f"{name}: the output after .{mode}() should have shape "
                                 f"{tuple(like.shape)}, got {tuple(t.shape)}",
                              zh=f"{name}：.{mode}() 之后的输出形状应为 {tuple(like.shape)}，"
                                 f"得到的是 {tuple(t.shape)}"))
    return t


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-6, atol=1e-8))


def frozen_batch_norm(cls) -> None:
    """Check a layer class ``cls(num_features, eps=1e-5)`` that applies fixed statistics and fixed
    scale and shift, whatever its mode, with buffers named as ``torch.nn.BatchNorm2d``'s."""
    name = "frozen_batch_norm"
    if not isinstance(cls, type):
        raise CheckFailed(say(en=f"{name}: expected a class (an nn.Module subclass), got {cls!r}",
                              zh=f"{name}：应传入一个类（nn.Module 的子类），得到的是 {cls!r}"))
    layer = _construct(cls, name, 3)
    if list(layer.parameters()):
        names = [k for k, _ in layer.named_parameters()]
        raise CheckFailed(say(
            en=f"{name}: the layer has parameters {names}; a frozen layer keeps weight and bias as "
               f"buffers (register_buffer), so no optimizer can change them",
            zh=f"{name}：这个层有参数 {names}；冻结层把 weight 和 bias 存为缓冲区（register_buffer），"
               f"这样任何优化器都改不了它们"))
    buffers = dict(layer.named_buffers())
    missing = [k for k in ("weight", "bias", "running_mean", "running_var") if k not in buffers]
    if missing:
        raise CheckFailed(say(
            en=f"{name}: no buffer {missing}; keep weight, bias, running_mean and running_var as "
               f"buffers with BatchNorm2d's names, so its state_dict loads",
            zh=f"{name}：缺少缓冲区 {missing}；请用 BatchNorm2d 的名字保存 weight、bias、running_mean "
               f"和 running_var 这几个缓冲区，这样才能载入它的 state_dict"))
    g = generator(0)
    source = nn.BatchNorm2d(3, eps=EPS).double()
    with torch.no_grad():
        source.weight.copy_(torch.rand(3, generator=g, dtype=torch.float64) + 0.5)
        source.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
        source.running_mean.copy_(torch.randn(3, generator=g, dtype=torch.float64))
        source.running_var.copy_(torch.tensor([1e-4, 0.5, 4.0], dtype=torch.float64))
    layer = _construct(cls, name, 3, eps=EPS).double()
    state = {k: v for k, v in source.state_dict().items() if k != "num_batches_tracked"}
    try:
        layer.load_state_dict(state)
    except RuntimeError as e:
        raise CheckFailed(say(
            en=f"{name}: loading BatchNorm2d's weight, bias, running_mean and running_var failed: {e}",
            zh=f"{name}：载入 BatchNorm2d 的 weight、bias、running_mean 和 running_var 失败：{e}")) from e
    x = channel_data((4, 3, 2, 2), 1, offset=3)
    source.eval()
    expected = source(x).detach()
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        before = {k: v.clone() for k, v in layer.state_dict().items()}
        where = say(en=f"the forward pass after .{mode}()", zh=f".{mode}() 之后的前向传播")
        got = _output(run(layer, x.clone(), name=name, what=where), name, expected, mode)
        if any(not torch.equal(v, before[k]) for k, v in layer.state_dict().items()):
            raise CheckFailed(say(
                en=f"{name}: a forward pass after .{mode}() changed the buffers; a frozen layer never "
                   f"updates them",
                zh=f"{name}：.{mode}() 之后的一次前向传播改变了缓冲区；冻结层从不更新它们"))
        if _close(got, expected):
            continue
        view = lambda v: v.reshape(1, -1, 1, 1)  # noqa: E731
        w, b, rm, rv = (view(before[k]) for k in ("weight", "bias", "running_mean", "running_var"))
        mistakes = [
            (nn.functional.batch_norm(x, None, None, before["weight"], before["bias"], True, 0.0, EPS),
             "it normalizes with the batch's statistics; a frozen layer uses running_mean and "
             "running_var, in training as in eval mode",
             "它用的是批的统计量；冻结层在训练模式和评估模式下都用 running_mean 和 running_var"),
            (w * (x - rm) / rv.sqrt() + b, "eps is missing: divide by sqrt(running_var + eps)",
             "漏了 eps：应除以 sqrt(running_var + eps)"),
            ((x - rm) / (rv + EPS).sqrt(), "weight and bias are not applied", "没有乘 weight、加 bias"),
        ]
        for wrong, en, zh in mistakes:
            if _close(got, wrong):
                raise CheckFailed(say(en=f"{name}: the output after .{mode}() is wrong: {en}",
                                      zh=f"{name}：.{mode}() 之后的输出不对：{zh}"))
        raise CheckFailed(say(
            en=f"{name}: the output after .{mode}() is wrong; out = weight * (x - running_mean) / "
               f"sqrt(running_var + eps) + bias, per channel (dim 1)",
            zh=f"{name}：.{mode}() 之后的输出不对；应逐通道（第 1 维）计算 out = weight * (x - running_mean) "
               f"/ sqrt(running_var + eps) + bias"))
    passed(name, say(en="eval-mode output in both modes, never updated",
                     zh="两种模式下都输出评估模式的结果，且从不更新"))


def train_with_frozen_bn(fn: Callable) -> None:
    """Check ``fn(model)``: put ``model`` in training mode except for its batch-norm layers, which
    stay in eval mode (running statistics used, never updated), at any depth of nesting."""
    from ... import nn as bnn

    name = "train_with_frozen_bn"
    torch.manual_seed(shifted(0))
    model = nn.Sequential(
        nn.Linear(4, 6, bias=False), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5),
        nn.Sequential(nn.Linear(6, 6, bias=False), bnn.BatchNorm1d(6), nn.ReLU()),
        nn.Linear(6, 2),
    )
    model.eval()
    out = run(fn, model, name=name, what=say(en="the function", zh="这个函数"))
    if out is not None and out is not model:
        raise CheckFailed(say(en=f"{name}: change the model in place (return nothing, or the same model)",
                              zh=f"{name}：请就地修改模型（什么都不返回，或返回同一个模型）"))
    norms = bn_layers(model)
    others = [m for m in model.modules() if m not in norms]
    if not model[3].training:
        raise CheckFailed(say(
            en=f"{name}: the dropout layer is in eval mode, so it is off; only the batch-norm layers "
               f"should be in eval mode: call model.train() first",
            zh=f"{name}：dropout 层处于评估模式，等于关掉了；只有批标准化层应处于评估模式："
               f"请先调用 model.train()"))
    frozen_grads = [p for m in norms for p in m.parameters() if not p.requires_grad]
    if all(m.training for m in norms):
        raise CheckFailed(say(
            en=f"{name}: the batch-norm layers are in training mode, so their running statistics keep "
               f"moving; call .eval() on each of them."
               + (" Turning off requires_grad freezes gamma and beta, not the statistics."
                  if frozen_grads else ""),
            zh=f"{name}：批标准化层处于训练模式，它们的滑动平均统计量会一直变；请对每一层调用 .eval()。"
               + ("关掉 requires_grad 冻结的是 gamma 和 beta，而不是统计量。" if frozen_grads else "")))
    if any(m.training for m in norms):
        raise CheckFailed(say(
            en=f"{name}: the batch-norm layer nested inside a Sequential is still in training mode; "
               f"find them all with model.modules(), not model.children()",
            zh=f"{name}：嵌套在 Sequential 里的批标准化层仍处于训练模式；请用 model.modules() 而不是 "
               f"model.children() 找出所有批标准化层"))
    if not all(m.training for m in others):
        raise CheckFailed(say(en=f"{name}: some layers other than batch norm are in eval mode",
                              zh=f"{name}：除批标准化外，还有别的层处于评估模式"))
    before = [m.running_mean.clone() for m in norms]
    model(torch.randn(8, 4))
    if not all(torch.equal(b, m.running_mean) for b, m in zip(before, norms, strict=True)):
        raise CheckFailed(say(en=f"{name}: a forward pass still moved the running statistics",
                              zh=f"{name}：一次前向传播仍然改变了滑动平均统计量"))
    passed(name, say(en="dropout on, every batch-norm layer held",
                     zh="dropout 开着，每个批标准化层都被固定住"))
