"""Exercise checks of Chapter 7, batch norm meets the hardware: predicting how much longer a
training step takes than eval, folding a batch norm into the layer *after* it, and exporting a
folded model from one left in training mode."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import numbers
import textwrap

import torch
from torch import nn

from ...lab.device import generator
from ...lab.hardware import TENSOR_PASSES
from .core import CheckFailed, language, passed, run, say

__all__ = ["fixed_export", "fold_into_next", "peak_tensors", "train_eval_ratio", "two_stage_share",
           "var_mean_ratio"]


# ---------------------------------------------------------------------------------------------
# 07a, predict: a training step against eval, in time


def _prediction(name: str, guess, measured: float, low: float, high: float,
                why_range: tuple[str, str], explain: tuple[str, str], fmt: str = ".3g") -> None:
    """A *predict* check in both languages: any honest number in ``[low, high]`` passes, and the
    message sets it beside ``measured`` and gives ``explain`` (en, zh)."""
    if guess is None or isinstance(guess, bool) or not isinstance(guess, numbers.Real) \
            or math.isnan(guess):
        raise CheckFailed(say(
            en=f"{name}: expected your prediction as a number, got {guess!r}; commit to one before "
               "you run the measurement",
            zh=f"{name}：预测应是一个数，得到的是 {guess!r}；请在运行测量之前先写下你的预测"))
    if not low <= guess <= high:
        raise CheckFailed(say(
            en=f"{name}: your prediction {guess:{fmt}} is outside [{low:{fmt}}, {high:{fmt}}]: "
               f"{why_range[0]}",
            zh=f"{name}：你的预测 {guess:{fmt}} 不在 [{low:{fmt}}, {high:{fmt}}] 之内：{why_range[1]}"))
    if math.isclose(guess, measured, rel_tol=0.1, abs_tol=1e-12):
        how = say(en="within 10% of the run", zh="与测量结果相差不到 10%")
    elif guess > 0 and measured > 0:
        gap = guess / measured
        how = say(en=f"{max(gap, 1 / gap):.1f} times {'above' if gap > 1 else 'below'} the run",
                  zh=f"比测量结果{'高' if gap > 1 else '低'} {max(gap, 1 / gap):.1f} 倍")
    else:
        how = say(en=f"{abs(guess - measured):{fmt}} {'above' if guess > measured else 'below'} the run",
                  zh=f"比测量结果{'高' if guess > measured else '低'} {abs(guess - measured):{fmt}}")
    passed(name)
    text = say(en=f"You predicted {guess:{fmt}}, the run measured {measured:{fmt}}: {how}. "
                  f"{explain[0]}.",
               zh=f"你预测 {guess:{fmt}}，测得 {measured:{fmt}}：{how}。{explain[1]}。")
    width = 42 if language() == "zh" else 86  # a CJK character is two columns wide
    print(textwrap.fill(text, width=width, initial_indent="  ", subsequent_indent="  "))


def train_eval_ratio(guess, timing) -> None:
    """Check the prediction ``guess``: how many times as long as an eval forward PyTorch's training
    step (forward and backward) takes on x, from ``timing`` (``bn.hardware.time_with_roof`` of the
    kernels ``"train fwd+bwd"`` and ``"eval"``). Any honest number from 1 to 10,000 passes; the
    message sets it beside the run and beside what the bytes alone predict."""
    name = "train_eval_ratio"
    train, evaluate = timing.seconds["train fwd+bwd"], timing.seconds["eval"]
    measured = train / evaluate
    bytes_ratio = TENSOR_PASSES["train fwd+bwd"] / TENSOR_PASSES["eval"]
    share_train = timing.share("train fwd+bwd", "train fwd+bwd")
    share_eval = timing.share("eval", "eval")
    if share_train < share_eval / 1.5:
        why = (
            f"The eval kernel reached {share_eval:.0%} of its bound and the training step only "
            f"{share_train:.0%} of its own: a step is more than its bytes. It sweeps x once more "
            "for the statistics, its reductions do more arithmetic per value than a stream, "
            "autograd records and replays the graph, and every fresh tensor it allocates costs "
            "page faults on first touch (next page)",
            f"评估模式的内核达到了其上界的 {share_eval:.0%}，训练步只达到其自身上界的 {share_train:.0%}："
            "训练步不只是搬运字节。它为统计量多扫一遍 x，归约对每个值做的运算比单纯的数据流多，"
            "autograd 要记录并回放计算图，而它新分配的每个张量在第一次写入时都会引发缺页中断（见下一页）")
    else:
        why = (
            f"The eval kernel reached {share_eval:.0%} of its bound and the training step "
            f"{share_train:.0%} of its own: both fell about as far short of their roofs, so the "
            "ratio stayed near that of the bytes. What kept them from the roof (fresh tensors' "
            "page faults, a busy machine) cost both in proportion; the next page looks at it",
            f"评估模式的内核达到了其上界的 {share_eval:.0%}，训练步达到其自身上界的 {share_train:.0%}："
            "两者离各自的屋顶差不多一样远，所以比值停留在字节数之比附近。让它们够不着屋顶的因素"
            "（新张量的缺页中断、繁忙的机器）按比例拖慢了两者；下一页会仔细看这一点")
    _prediction(name, guess, measured, 1, 1e4, (
        "a training step reads and writes at least as much as eval, and no step here takes "
        "10,000 times as long",
        "训练步读写的数据至少和评估模式一样多，而这里也没有哪一步会慢到一万倍"), (
        f"The bytes alone predict {bytes_ratio:.1f} (5 input-sized tensors against 2). {why[0]}",
        f"只看字节数的预测是 {bytes_ratio:.1f}（5 个输入大小的张量对 2 个）。{why[1]}"))


def var_mean_ratio(guess, timing) -> None:
    """Check the prediction ``guess``: how many times as long as ``x.sum(0)`` ``torch.var_mean(x, 0)``
    takes, from ``timing`` (``bn.hardware.time_with_roof`` of both, under those names)."""
    measured = timing.seconds["torch.var_mean(x, 0)"] / timing.seconds["x.sum(0)"]
    _prediction("var_mean_ratio", guess, measured, 0.5, 1e4, (
        "both read x once, and nothing here takes 10,000 times as long",
        "两者都只读一遍 x，这里也没有哪个操作会慢到一万倍"), (
        "Both read x once, so the bytes predict about 1. The rest is the work per value: var_mean "
        "also computes the variance, with Welford's update (a division for every value, carried "
        "value by value), where the sum adds whole vectors of channels at a time",
        "两者都只读一遍 x，所以按字节数预测约为 1。其余的差别在于每个值上的运算：var_mean 还要用 "
        "Welford 更新算方差（每个值都要做一次除法，逐个值递推），而求和一次加一整个向量的通道"))


def two_stage_share(guess, timing) -> None:
    """Check the prediction ``guess``: the time of the compiled two-stage sum as a fraction of the
    compiled plain ``x.sum(0)``, from ``timing`` (``bn.hardware.time_with_roof`` of both, named
    ``"compiled two-stage"`` and ``"compiled x.sum(0)"``)."""
    measured = timing.seconds["compiled two-stage"] / timing.seconds["compiled x.sum(0)"]
    _prediction("two_stage_share", guess, measured, 0.01, 10, (
        "a fraction of the plain loop's time: 0.5 means twice as fast",
        "这是占原始循环时间的比例：0.5 表示快一倍"), (
        "Both read x once. The plain loop walks all 8 MiB once for every vector of channels, a "
        "stride of one row between reads; the two-stage sum reads blocks of whole rows in order, "
        "which the caches and prefetchers serve at their best, and then adds the blocks' partial "
        "sums. How much that gains depends on the processor",
        "两者都只读一遍 x。原始循环为每一个通道向量都把 8 MiB 从头走到尾，相邻两次读取相隔一整行；"
        "两阶段求和按顺序读取由整行组成的块，缓存和预取器最擅长服务这种访问，最后再把各块的部分和相加。"
        "能快多少取决于处理器"))


def peak_tensors(guess, peaks) -> None:
    """Check the prediction ``guess``: how many input-sized tensors above its inputs PyTorch's
    training step holds at its peak, from ``peaks`` (``{"PyTorch": tensors, ...}``)."""
    measured = peaks["PyTorch"]
    _prediction("peak_tensors", guess, measured, 0, 20, (
        "counted in tensors the size of x, above x, dy and the parameters",
        "以 x 大小的张量为单位，不计 x、dy 和参数"), (
        "The inputs x and dy are there already (x is also what the backward keeps). Above them a "
        "step must hold its output y and the input gradient dx, 2 tensors at least; the rest are "
        "the backward's temporaries, which a kernel written in one loop avoids",
        "输入 x 和 dy 本来就在（x 也正是反向传播保存的东西）。在此之上，一个训练步至少要同时持有输出 y "
        "和输入梯度 dx 两个张量；其余的是反向传播的临时张量，写成一个循环的内核可以省掉它们"), ".2f")


# ---------------------------------------------------------------------------------------------
# 07d, derive: a batch norm folded into the Linear after it


def _eval_pair(seed: int, n_in: int, n_out: int, affine: bool):
    """An eval-mode BatchNorm1d(n_in) with learned-looking statistics, the Linear after it, inputs."""
    g = generator(seed + 70)
    norm = nn.BatchNorm1d(n_in, eps=1e-3, affine=affine).double()
    linear = nn.Linear(n_in, n_out).double()
    with torch.no_grad():
        for p in (*linear.parameters(), *norm.parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        norm.running_mean.copy_(torch.randn(n_in, generator=g, dtype=torch.float64) * 2)
        norm.running_var.copy_(torch.rand(n_in, generator=g, dtype=torch.float64) * 3 + 0.01)
        norm.running_var[0] = 1e-4  # a channel where eps matters
    return norm.eval(), linear, torch.randn(16, n_in, generator=g, dtype=torch.float64)


def _folded_next(norm, linear, *, eps=True, mean=True, rows=False, shift=True):
    """``linear(norm(x))`` folded, right or with one of the usual slips."""
    scale = 1 / (norm.running_var + (norm.eps if eps else 0.0)).sqrt()
    if norm.weight is not None:
        scale = scale * norm.weight
    t = -scale * norm.running_mean if mean else torch.zeros_like(scale)
    if norm.bias is not None:
        t = t + norm.bias
    if rows:  # scaled as if the batch norm came after: one factor per output row
        if linear.out_features != linear.in_features:
            return None
        weight = linear.weight * scale[:, None]
    else:
        weight = linear.weight * scale[None, :]
    bias = linear.bias + (linear.weight @ t if shift else 0.0)
    return lambda x: x @ weight.T + bias


def fold_into_next(fn) -> None:
    """Check ``fn(batch_norm, linear) -> nn.Linear`` computing ``linear(batch_norm(x))`` for a
    batch norm in eval mode: the batch norm folded into the layer *after* it."""
    name = "fold_into_next"
    cases = [(5, 5, True), (3, 6, True), (4, 2, False), (6, 6, True)]
    for seed, (n_in, n_out, affine) in enumerate(cases):
        norm, linear, x = _eval_pair(seed, n_in, n_out, affine)
        before = [t.clone() for t in (*linear.state_dict().values(), *norm.state_dict().values())]
        what = say(en=f"BatchNorm1d({n_in}, affine={affine}) then Linear({n_in}, {n_out})",
                   zh=f"BatchNorm1d({n_in}, affine={affine}) 后接 Linear({n_in}, {n_out})")
        with torch.no_grad():
            want = linear(norm(x))
            got_layer = run(fn, norm, linear, name=name, what=what)
        if not isinstance(got_layer, nn.Linear):
            raise CheckFailed(say(en=f"{name}: expected an nn.Linear, got {type(got_layer).__name__}",
                                  zh=f"{name}：应返回一个 nn.Linear，得到的是 {type(got_layer).__name__}"))
        after = (*linear.state_dict().values(), *norm.state_dict().values())
        if any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)):
            raise CheckFailed(say(
                en=f"{name}: the original layers were changed; fold into a copy (copy.deepcopy) so "
                   "the unfolded model still works",
                zh=f"{name}：原来的层被改动了；请在副本（copy.deepcopy）上折叠，让未折叠的模型照常可用"))
        with torch.no_grad():
            got = got_layer(x.to(got_layer.weight.dtype)).double()
        if got.shape == want.shape and torch.allclose(got, want, rtol=1e-7, atol=1e-7):
            continue
        mistakes = [
            (dict(rows=True), say(
                en="the weight is scaled row by row (per output); here batch norm scales the "
                   "layer's inputs, so each column k of W is scaled by s_k",
                zh="权重是按行（按输出）缩放的；这里批标准化缩放的是该层的输入，"
                   "所以应把 W 的第 k 列乘以 s_k")),
            (dict(shift=False), say(
                en="the shift is missing from the bias: the batch norm's shift t = beta - s * mean "
                   "passes through W, so b' = b + W t",
                zh="偏置中漏了平移项：批标准化的平移 t = beta - s * mean 也要经过 W，所以 b' = b + W t")),
            (dict(mean=False), say(
                en="the running mean is missing: t = beta - s * mean, then b' = b + W t",
                zh="漏了滑动平均的均值：t = beta - s * mean，再令 b' = b + W t")),
            (dict(eps=False), say(en="eps is missing: s = gamma / sqrt(running_var + eps)",
                                  zh="漏了 eps：s = gamma / sqrt(running_var + eps)")),
        ]
        with torch.no_grad():
            for slip, why in mistakes:
                wrong = _folded_next(norm, linear, **slip)
                if wrong is not None and got.shape == want.shape \
                        and torch.allclose(got, wrong(x), rtol=1e-7, atol=1e-7):
                    raise CheckFailed(f"{name}: {why} ({what})")
        error = (got - want).abs().max().item() if got.shape == want.shape else float("nan")
        raise CheckFailed(say(
            en=f"{name}: the folded layer differs from linear(batch_norm(x)) by up to {error:.3g} "
               f"({what}); write batch norm as s * x + t and substitute it into W x + b",
            zh=f"{name}：折叠后的层与 linear(batch_norm(x)) 最多相差 {error:.3g}（{what}）；"
               "把批标准化写成 s * x + t，再代入 W x + b"))
    passed(name, say(en=f"{len(cases)} BatchNorm1d + Linear pairs, to 1e-7",
                     zh=f"{len(cases)} 组 BatchNorm1d + Linear，误差在 1e-7 以内"))


# ---------------------------------------------------------------------------------------------
# 07d, diagnose: a model folded for export while still in training mode


def _export_net(seed: int, n_in: int = 20, width: int = 32, n_out: int = 10) -> nn.Sequential:
    """A small network as its training loop leaves it: in training mode, with batch norm's running
    statistics and gamma, beta learned (here: set from seed ``seed``)."""
    g = generator(seed + 90)
    net = nn.Sequential(nn.Linear(n_in, width), nn.BatchNorm1d(width), nn.ReLU(),
                        nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
                        nn.Linear(width, n_out))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.BatchNorm1d):
                m.weight.copy_(torch.rand(width, generator=g) + 0.5)
                m.bias.copy_(torch.randn(width, generator=g) * 0.5)
                m.running_mean.copy_(torch.randn(width, generator=g))
                m.running_var.copy_(torch.rand(width, generator=g) * 2 + 0.3)
    return net.train()


def _batch_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def fixed_export(fn) -> None:
    """Check ``fn(model, images) -> (folded, error)``: the model folded for deployment, and the
    largest difference between the folded network and the model on ``images``. The folded network
    must compute what the model computes in eval mode, the model's statistics must come out
    unchanged, and the script's own error must say so."""
    name = "fixed_export"
    for seed in range(3):
        net = _export_net(seed)
        g = generator(seed + 95)
        images = torch.randn(16, 20, generator=g) * 1.5 + 0.5
        unseen = torch.randn(64, 20, generator=g) * 1.5 + 0.5
        reference = copy.deepcopy(net).eval()
        what = say(en=f"network {seed}", zh=f"第 {seed} 个网络")
        with contextlib.redirect_stdout(io.StringIO()):
            out = run(fn, net, images, name=name, what=what)
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise CheckFailed(say(en=f"{name}: return the pair (folded, error), got "
                                     f"{type(out).__name__}",
                                  zh=f"{name}：应返回 (folded, error) 二元组，得到的是 {type(out).__name__}"))
        folded, error = out
        stats_moved = any(not torch.equal(a.running_mean, b.running_mean)
                          or not torch.equal(a.running_var, b.running_var)
                          for a, b in zip(_batch_norms(net), _batch_norms(reference), strict=True))
        if stats_moved:
            raise CheckFailed(say(
                en=f"{name}: the model's running statistics changed during the export ({what}): a "
                   "forward pass in training mode normalizes with the batch's statistics and "
                   "updates the running ones. Put the model in eval mode before any forward pass",
                zh=f"{name}：导出过程中模型的滑动平均统计量变了（{what}）：训练模式下的前向传播用这一批的"
                   "统计量做标准化，并更新滑动平均统计量。请在任何前向传播之前把模型切换到评估模式"))
        if not isinstance(folded, nn.Module):
            raise CheckFailed(say(en=f"{name}: expected the folded network (an nn.Module) first, got "
                                     f"{type(folded).__name__}",
                                  zh=f"{name}：二元组的第一项应是折叠后的网络（nn.Module），得到的是 "
                                     f"{type(folded).__name__}"))
        if _batch_norms(folded):
            raise CheckFailed(say(en=f"{name}: the returned network still has batch norm layers; "
                                     "return the folded one",
                                  zh=f"{name}：返回的网络里仍有批标准化层；请返回折叠后的网络"))
        with torch.no_grad():
            want, got = reference(unseen), folded(unseen)
        gap = (got - want).abs().max().item() if got.shape == want.shape else float("nan")
        if not gap <= 1e-4 * (1 + want.abs().max().item()):
            raise CheckFailed(say(
                en=f"{name}: the folded network differs from the model in eval mode by up to "
                   f"{gap:.3g} on new inputs ({what}); fold the model as it is at the end of training",
                zh=f"{name}：在新的输入上，折叠后的网络与评估模式下的模型最多相差 {gap:.3g}（{what}）；"
                   "请折叠训练结束时的模型"))
        if not isinstance(error, numbers.Real) or not error < 1e-4 * (1 + want.abs().max().item()):
            raise CheckFailed(say(
                en=f"{name}: the folded network is right, but the script's own error is {error!r}: "
                   "its reference still runs the model in training mode (batch statistics), so the "
                   "check before deployment would report a difference that is not there",
                zh=f"{name}：折叠后的网络是对的，但脚本自己算出的误差是 {error!r}：它的参照仍在训练模式下运行"
                   "模型（用的是这一批的统计量），于是部署前的检查会报告一个并不存在的差异"))
    passed(name, say(en="3 networks, each folded as it is in eval mode",
                     zh="3 个网络，每个都按评估模式折叠"))
