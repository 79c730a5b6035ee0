"""Exercise checks of Chapter 3, the BN flow: forward, scale and shift, backward, gradient checking.

Each check runs the learner's function on fresh float64 inputs built so that the usual mistakes
(unbiased variance, eps forgotten, wrong axis, a gradient that ignores mu and sigma) give clearly
different numbers, compares with :mod:`bncourse.functional` or PyTorch, and names the mistake it
recognises, in the learner's language (:func:`.core.say`).
"""

import math
from collections.abc import Callable

import torch

from ... import functional as F
from ...lab.device import generator
from ...lab.testing import numeric_gradient as _reference_gradient
from ...lab.testing import rel_error
from .core import CheckFailed, affine_params, call, channel_data, passed, say

__all__ = ["bias_shift", "bn_backward", "bn_forward", "gradient_kept", "hand_written_layer",
           "identity_gap", "numeric_gradient"]

EPS = 1e-3  # large enough that forgetting it, or adding it in the wrong place, shows


def _reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    return (0, *range(2, x.dim()))


def _channel_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def _result(value, name: str, like: torch.Tensor, wrong_axis: tuple[str, str] | None = None) -> torch.Tensor:
    """The learner's value as a float64 tensor shaped like ``like`` (a 0-d value is broadcast).
    ``wrong_axis``: the hint (English, Chinese) a result of the wrong shape gets."""
    if value is None:
        raise CheckFailed(say(en=f"{name}: the function returned None; did you forget `return`?",
                              zh=f"{name}：函数返回了 None；是不是忘了 `return`？"))
    if isinstance(value, tuple | list):
        raise CheckFailed(say(
            en=f"{name}: expected one tensor of shape {tuple(like.shape)}, got a "
               f"{type(value).__name__} of {len(value)} items",
            zh=f"{name}：应返回一个形状为 {tuple(like.shape)} 的张量，得到的是含 {len(value)} 项的 "
               f"{type(value).__name__}"))
    t = torch.as_tensor(value).detach().to(torch.float64).cpu()
    if t.dim() == 0:
        t = t.expand(like.shape)
    if t.shape != like.shape:
        en, zh = (f" ({wrong_axis[0]})", f"（{wrong_axis[1]}）") if wrong_axis else ("", "")
        raise CheckFailed(say(en=f"{name}: expected shape {tuple(like.shape)}, got {tuple(t.shape)}{en}",
                              zh=f"{name}：形状应为 {tuple(like.shape)}，得到的是 {tuple(t.shape)}{zh}"))
    return t


Mistake = tuple[str, str, torch.Tensor]  # (English, Chinese, the value that mistake gives)


def _compare(name: str, what: tuple[str, str], got: torch.Tensor, ref: torch.Tensor,
             mistakes: list[Mistake], hint: tuple[str, str]) -> None:
    """Pass if ``got`` matches ``ref``; else name the first mistake it matches, or give a hint.
    ``what`` and ``hint`` are (English, Chinese)."""
    if _close(got, ref):
        return
    for en, zh, wrong in mistakes:
        if _close(got, wrong):
            raise CheckFailed(say(en=f"{name}: {what[0]} is wrong: {en}",
                                  zh=f"{name}：{what[1]}不对：{zh}"))
    if not torch.isfinite(got).all():
        raise CheckFailed(say(en=f"{name}: {what[0]} contains NaN or inf",
                              zh=f"{name}：{what[1]}含有 NaN 或 inf"))
    err = rel_error(got, ref)
    raise CheckFailed(say(
        en=f"{name}: {what[0]} differs from the reference (largest relative error {err:.2g}); {hint[0]}",
        zh=f"{name}：{what[1]}与参考结果不同（最大相对误差 {err:.2g}）；{hint[1]}"))


def _normalize(x, dims, eps, unbiased=False, how="sqrt(var + eps)"):
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, keepdim=True, correction=int(unbiased))
    denominator = {
        "sqrt(var + eps)": lambda: torch.sqrt(var + eps),
        "sqrt(var)": lambda: torch.sqrt(var),
        "sqrt(var) + eps": lambda: torch.sqrt(var) + eps,
        "var + eps": lambda: var + eps,
    }[how]()
    return (x - mean) / denominator


UNBIASED = ("it uses the unbiased variance (divided by m - 1); batch norm normalizes with the biased "
            "one, the mean of (x - mu)^2 (torch: correction=0)",
            "用了无偏方差（除以 m - 1）；批标准化用有偏方差做标准化，"
            "即 (x - mu)^2 的均值（torch 中 correction=0）")
FORWARD_HINT = ("compute mu and the biased variance per channel over every dim but 1, "
                "x_hat = (x - mu) / sqrt(var + eps), then gamma * x_hat + beta",
                "对每个通道，在除第 1 维以外的所有维上计算 mu 和有偏方差，"
                "x_hat = (x - mu) / sqrt(var + eps)，"
                "再算 gamma * x_hat + beta")


def bn_forward(fn: Callable) -> None:
    """Check ``fn(x, gamma, beta, eps) -> out``, batch norm's training forward for (N, C, *)."""
    name = "bn_forward"
    for seed, (shape, eps) in enumerate([((4, 6), EPS), ((16, 5), 1e-5), ((3, 4, 2, 3), EPS)]):
        x = channel_data(shape, seed, offset=5)
        gamma, beta = affine_params(shape[1], seed)
        dims = _reduce_dims(x)
        g, b = (_channel_view(v, x) for v in (gamma, beta))
        ref = F.batch_norm_forward(x, gamma, beta, eps)[0]
        out = call(fn, x.clone(), gamma.clone(), beta.clone(), eps, name=name)
        got = _result(out, name, ref)
        norm = lambda **kw: g * _normalize(x, dims, eps, **kw) + b  # noqa: B023, E731
        mistakes = [
            (*UNBIASED, norm(unbiased=True)),
            (f"eps is missing (this batch has a channel whose variance is below eps={eps:g}): "
             "divide by sqrt(var + eps)",
             f"缺少 eps（这一批有一个通道的方差小于 eps={eps:g}）：应除以 sqrt(var + eps)",
             norm(how="sqrt(var)")),
            ("eps is added outside the square root: divide by sqrt(var + eps), not sqrt(var) + eps",
             "eps 加在了平方根外面：应除以 sqrt(var + eps)，而不是 sqrt(var) + eps",
             norm(how="sqrt(var) + eps")),
            ("it divides by the variance: divide by the standard deviation sqrt(var + eps)",
             "除以的是方差：应除以标准差 sqrt(var + eps)", norm(how="var + eps")),
            ("gamma and beta are not applied: return gamma * x_hat + beta",
             "没有用上 gamma 和 beta：应返回 gamma * x_hat + beta", _normalize(x, dims, eps)),
            ("gamma and beta are swapped: gamma scales, beta shifts",
             "gamma 和 beta 用反了：gamma 负责缩放，beta 负责平移",
             _channel_view(beta, x) * _normalize(x, dims, eps) + _channel_view(gamma, x)),
            ("statistics over all the elements at once: batch norm takes one mean and variance per "
             "channel (dim 1)",
             "统计量是对所有元素一起算的：批标准化对每个通道（第 1 维）各算一个均值和方差",
             g * _normalize(x, tuple(range(x.dim())), eps) + b),
        ]
        if x.dim() == 2:
            mistakes.append(("statistics over the wrong axis, per sample over dim 1 (that is layer "
                             "normalization): batch norm takes them per feature over the batch, dim 0",
                             "统计量的轴不对：对每个样本沿第 1 维计算（那是层标准化）；批标准化对每个特征"
                             "沿批这一维（第 0 维）计算",
                             g * _normalize(x, (1,), eps) + b))
        else:
            mistakes += [
                ("statistics over dim 0 only, one mean per position: for an (N, C, H, W) input batch "
                 "norm takes one mean and variance per channel over (N, H, W)",
                 "统计量只沿第 0 维计算，每个位置一个均值：对 (N, C, H, W) 的输入，批标准化对每个通道在 "
                 "(N, H, W) 上算一个均值和方差",
                 g * _normalize(x, (0,), eps) + b),
                ("statistics over (H, W) for each sample (that is instance normalization): batch norm "
                 "takes one mean and variance per channel over (N, H, W)",
                 "统计量是对每个样本在 (H, W) 上算的（那是实例标准化）：批标准化对每个通道在 (N, H, W) "
                 "上算一个均值和方差",
                 g * _normalize(x, (2, 3), eps) + b),
            ]
        what = (f"the output for an input of shape {shape}", f"形状为 {shape} 的输入的输出")
        _compare(name, what, got, ref, mistakes, FORWARD_HINT)
    passed(name, say(en="2D and 4D inputs, eps respected", zh="二维和四维输入，eps 处理正确"))


def _mean_batch_std(m: int) -> float:
    """E[S] for S the biased standard deviation of m independent standard normal values:
    m S^2 is chi-square with m - 1 degrees of freedom."""
    return math.sqrt(2 / m) * math.exp(math.lgamma(m / 2) - math.lgamma((m - 1) / 2))


def identity_gap_exact(m: int) -> float:
    """The mean of (y - x)^2 / sigma^2 over batches of ``m`` normal values, for training-mode batch
    norm with the population's gamma = sigma and beta = mu (eps negligible).

    With x_i = mu + sigma z_i, y_i - x_i = sigma ((z_i - z_bar)(1/S - 1) - z_bar), whose mean square
    over the batch is sigma^2 ((1 - S)^2 + z_bar^2); its expectation is 1 - 2 E[S] + (m - 1)/m + 1/m
    = 2 (1 - E[S]), about 3 / (2m): 1/m from the batch mean, 1/(2m) from the batch standard
    deviation."""
    return 2 * (1 - _mean_batch_std(m))


def identity_gap_measured(m: int, batches: int = 20_000, seed: int = 0) -> float:
    """The same mean square, measured on ``batches`` batches of ``m`` standard normal values."""
    z = torch.randn(batches, m, generator=generator(seed), dtype=torch.float64)
    mean, var = z.mean(1, keepdim=True), z.var(1, correction=0, keepdim=True)
    y = (z - mean) / torch.sqrt(var)  # gamma = 1, beta = 0: the population's, eps = 0
    return (y - z).square().mean().item()


GAP_SIZES = (5, 8, 16, 64, 256)
GAP_RTOL = 0.07  # the first-order 3 / (2m) is 5.8% below the exact value at m = 5


def _numbers(fn: Callable, name: str, sizes: tuple[int, ...]) -> list[float]:
    """``fn(m)`` for each batch size ``m``, as finite floats, or a failure that says what came back."""
    values = []
    for m in sizes:
        value = call(fn, m, name=name)
        if value is None:
            raise CheckFailed(say(en=f"{name}: the function returned None; did you forget `return`?",
                                  zh=f"{name}：函数返回了 None；是不是忘了 `return`？"))
        try:
            values.append(float(value))
        except (TypeError, ValueError) as e:
            raise CheckFailed(say(en=f"{name}: expected one number for m = {m}, got {value!r}",
                                  zh=f"{name}：m = {m} 时应返回一个数，得到的是 {value!r}")) from e
    if not all(math.isfinite(v) for v in values):
        raise CheckFailed(say(en=f"{name}: your result is not finite for some m: {values}",
                              zh=f"{name}：某些 m 下你的结果不是有限数：{values}"))
    return values


def identity_gap(fn: Callable) -> None:
    """Check ``fn(m) -> gap``: the mean of (y - x)^2 in units of the feature's variance, for batch
    norm in training mode with the population's gamma and beta, on batches of ``m``."""
    name = "identity_gap"
    exact = torch.tensor([identity_gap_exact(m) for m in GAP_SIZES], dtype=torch.float64)
    values = _numbers(fn, name, GAP_SIZES)
    got = torch.tensor(values, dtype=torch.float64)
    sizes = torch.tensor(GAP_SIZES, dtype=torch.float64)
    if torch.allclose(got, exact, rtol=GAP_RTOL, atol=0):
        m = GAP_SIZES[0]
        detail = say(
            en=f"for m = {m} you derived {values[0]:.4f}; exact {exact[0]:.4f}, measured on 20,000 "
               f"batches {identity_gap_measured(m):.4f}. About 3/(2m): 1/m from the batch mean, 1/(2m) "
               "from the batch standard deviation",
            zh=f"m = {m} 时你推导出 {values[0]:.4f}；精确值 {exact[0]:.4f}，在 20,000 个批上测得 "
               f"{identity_gap_measured(m):.4f}。约为 3/(2m)：1/m 来自批均值，1/(2m) 来自批标准差")
        passed(name, detail)
        return
    mistakes = [
        ("it is zero, but in training mode the layer normalizes each batch with that batch's own mean "
         "and standard deviation, which miss the population's: the identity is exact only in eval mode",
         "结果为零，但在训练模式下，层用每一批自己的均值和标准差做标准化，它们与总体的并不相同："
         "只有在评估模式下才恰好是恒等映射", torch.zeros_like(sizes)),
        ("it counts the noise of the batch mean (1/m) but not that of the batch standard deviation: "
         "y - x also has a part (x_i - mu_B)(sigma / sigma_B - 1)",
         "只算了批均值的噪声（1/m），没有算批标准差的噪声："
         "y - x 还有一部分 (x_i - mu_B)(sigma / sigma_B - 1)",
         1 / sizes),
        ("it counts the noise of the batch standard deviation but not that of the batch mean (1/m)",
         "只算了批标准差的噪声，没有算批均值的噪声（1/m）", 1 / (2 * sizes)),
        ("2/m is the variance of the batch variance sigma_B^2 / sigma^2; the batch standard deviation, "
         "its square root, varies half as much in relative terms, so its variance is about a quarter of "
         "that: 1/(2m)",
         "2/m 是批方差 sigma_B^2 / sigma^2 的方差；批标准差是它的平方根，相对波动只有一半，"
         "方差约为它的四分之一：1/(2m)",
         3 / sizes),
        ("it is a root mean square; the exercise asks for the mean of (y - x)^2, in units of sigma^2",
         "这是均方根；练习要的是 (y - x)^2 的均值，以 sigma^2 为单位", torch.sqrt(exact)),
    ]
    for en, zh, wrong in mistakes:
        if torch.allclose(got, wrong, rtol=GAP_RTOL, atol=0):
            raise CheckFailed(say(en=f"{name}: {en}", zh=f"{name}：{zh}"))
    mine = ", ".join(f"m = {m}: {v:.4g}" for m, v in zip(GAP_SIZES, values, strict=True))
    raise CheckFailed(say(
        en=f"{name}: not within {GAP_RTOL:.0%} of the exact value ({mine}). Write x_i = mu + sigma z_i "
           "and split y_i - x_i into a part from the batch mean and a part from the batch standard "
           "deviation",
        zh=f"{name}：与精确值相差超过 {GAP_RTOL:.0%}（{mine}）。把 x_i 写成 mu + sigma z_i，"
           "再把 y_i - x_i 拆成来自批均值的部分和来自批标准差的部分"))


def gradient_kept_measured(m: int, batches: int = 4000, seed: int = 0) -> float:
    """The mean over batches of ||dL/dx||^2 / ||direct path||^2, measured with the package's fused
    backward: ``batches`` batches of ``m`` standard normal values (one feature each, eps = 1e-5
    negligible), an upstream gradient of independent standard normal entries, gamma = 1."""
    g = generator(seed)
    x = torch.randn(m, batches, generator=g, dtype=torch.float64)
    dout = torch.randn(m, batches, generator=g, dtype=torch.float64)
    _, cache = F.batch_norm_forward(x, None, None, 1e-5)
    dx = F.batch_norm_backward_fused(dout, cache)[0]
    direct = dout * cache.inv_std
    return (dx.square().sum(0) / direct.square().sum(0)).mean().item()


KEPT_SIZES = (3, 4, 8, 32, 128)
KEPT_RTOL = 0.02  # the exact value for eps = 0; eps = 1e-5 on unit-variance data changes it by 1e-10


def gradient_kept(fn: Callable) -> None:
    """Check ``fn(m) -> fraction``: the squared norm of batch norm's input gradient over that of the
    direct path alone, on average over batches, for an upstream gradient of independent standard
    normal entries: the backward pass projects it off two of m orthonormal directions, which leaves
    (m - 2) / m (exactly, for eps = 0: the ratio is Beta((m - 2) / 2, 1))."""
    name = "gradient_kept"
    values = _numbers(fn, name, KEPT_SIZES)
    got = torch.tensor(values, dtype=torch.float64)
    m = torch.tensor(KEPT_SIZES, dtype=torch.float64)
    exact = (m - 2) / m
    if torch.allclose(got, exact, rtol=KEPT_RTOL, atol=1e-9):
        k = KEPT_SIZES[1]
        passed(name, say(
            en=f"for m = {k} you derived {values[1]:.4f}; measured with the backward pass on 4,000 batches "
               f"{gradient_kept_measured(k):.4f}. Of the m directions of the gradient, two are removed, "
               "the constant one and the one along x_hat: (m - 2) / m is kept",
            zh=f"m = {k} 时你推导出 {values[1]:.4f}；用反向传播在 4,000 个批上测得 "
               f"{gradient_kept_measured(k):.4f}。梯度的 m 个方向中去掉了两个：常数方向和沿 x_hat 的方向，"
               "所以保留了 (m - 2) / m"))
        return
    mistakes = [
        ("1 is the direct path's own: the paths through mu and sigma^2 take something away",
         "1 是直接路径自己的值：经过 mu 和 sigma^2 的路径会去掉一部分", torch.ones_like(m)),
        ("(m - 1) / m counts only the mean removed (the path through mu); the path through sigma^2 also "
         "removes the component along x_hat",
         "(m - 1) / m 只算了去掉的均值（经过 mu 的路径）；经过 sigma^2 的路径还去掉了沿 x_hat 的分量",
         (m - 1) / m),
        ("that is the fraction removed, not the fraction kept", "这是去掉的比例，而不是保留的比例", 2 / m),
        ("that is a ratio of norms; the exercise asks for the ratio of squared norms",
         "这是范数之比；练习要的是范数平方之比", torch.sqrt(exact)),
        ("removing two directions is right, but the gradient has m entries of variance 1, so its squared "
         "norm is m on average: divide by m, not m - 1",
         "去掉两个方向是对的，但应除以 m 而不是 m - 1：梯度有 m 个元素，每个的方差都是 1",
         (m - 2) / (m - 1)),
        ("that is the number of directions kept, m - 2; the exercise asks for the fraction of the squared "
         "norm", "这是保留的方向数 m - 2；练习要的是范数平方中保留的比例", m - 2),
    ]
    for en, zh, wrong in mistakes:
        if torch.allclose(got, wrong, rtol=KEPT_RTOL, atol=1e-9):
            raise CheckFailed(say(en=f"{name}: {en}", zh=f"{name}：{zh}"))
    mine = ", ".join(f"m = {k}: {v:.4g}" for k, v in zip(KEPT_SIZES, values, strict=True))
    raise CheckFailed(say(
        en=f"{name}: not the fraction the backward pass keeps ({mine}). Read the closed form as an "
           "operation on the vector (g_1, ..., g_m): which directions does it remove, and what share of "
           "a random vector's squared norm lies along each?",
        zh=f"{name}：不是反向传播保留的比例（{mine}）。把闭式解看作对向量 (g_1, ..., g_m) 的运算："
           "它去掉了哪些方向？一个随机向量的范数平方中，沿每个方向的平均占多少？"))


def bias_shift(fn: Callable) -> None:
    """Check ``fn(b, gamma, running_var, eps, training) -> shift`` of BN's output, per channel."""
    name = "bias_shift"
    for seed in range(3):
        g = generator(seed)
        b = torch.randn(5, generator=g, dtype=torch.float64)
        gamma = torch.rand(5, generator=g, dtype=torch.float64) * 1.5 + 0.5
        running_var = torch.logspace(-4, 1, 5, dtype=torch.float64)[torch.randperm(5, generator=g)]
        eps = EPS
        args = (b.clone(), gamma.clone(), running_var.clone(), eps)
        got = _result(call(fn, *args, True, name=name), name, b)
        if not _close(got, torch.zeros_like(b)):
            raise CheckFailed(say(
                en=f"{name}: the training-mode shift is wrong: in training mode the batch mean moves with "
                   "the bias (the mean of x + b is mu + b), so x - mu, and the output, do not change: the "
                   "shift is 0",
                zh=f"{name}：训练模式下的变化量不对：训练模式下批均值随偏置一起移动"
                   "（x + b 的均值是 mu + b），所以 x - mu 和输出都不变：变化量为 0"))
        got = _result(call(fn, *args, False, name=name), name, b)
        ref = gamma * b / torch.sqrt(running_var + eps)
        _compare(name, ("the eval-mode shift", "评估模式下的变化量"), got, ref, [
            ("in eval mode mu is the running mean, a constant: it does not absorb the bias",
             "评估模式下 mu 是滑动平均的均值，是个常数：它不会吸收偏置", torch.zeros_like(b)),
            ("the bias does not pass through unchanged: it is divided by sqrt(running_var + eps) and "
             "multiplied by gamma",
             "偏置不会原样传到输出：它要除以 sqrt(running_var + eps)，再乘以 gamma", b),
            ("eps is missing: the normalization divides by sqrt(running_var + eps)",
             "缺少 eps：标准化除以的是 sqrt(running_var + eps)", gamma * b / torch.sqrt(running_var)),
            ("gamma is missing: the normalized value is multiplied by gamma",
             "缺少 gamma：标准化后的值还要乘以 gamma", b / torch.sqrt(running_var + eps)),
            ("the square root is missing: divide by the standard deviation sqrt(running_var + eps)",
             "缺少平方根：应除以标准差 sqrt(running_var + eps)", gamma * b / (running_var + eps)),
            ("the sign is wrong: adding b to the input raises the output",
             "符号反了：输入加上 b 会使输出增大", -ref),
        ], ("in eval mode, out = gamma * (x - running_mean) / sqrt(running_var + eps) + beta",
            "评估模式下，out = gamma * (x - running_mean) / sqrt(running_var + eps) + beta"))
    passed(name, say(en="0 in training, gamma * b / sqrt(running_var + eps) in eval",
                     zh="训练模式下为 0，评估模式下为 gamma * b / sqrt(running_var + eps)"))


LAYER_PARTS = ("weight", "bias", "running_mean", "running_var")


def _layer_call(layer, x: torch.Tensor, name: str, mode: str) -> torch.Tensor:
    """The learner's layer applied to ``x`` (float64), any error turned into a failure that says where."""
    try:
        out = call(layer, x.clone(), name=name)
    except CheckFailed:
        raise
    except Exception as e:
        raise CheckFailed(say(en=f"{name}: the layer raised {type(e).__name__} in {mode} mode: {e}",
                              zh=f"{name}：层在{'训练' if mode == 'training' else '评估'}模式下抛出了 "
                                 f"{type(e).__name__}：{e}")) from e
    return _result(out, name, x)


def _running(batches: list[torch.Tensor], momentum: float, start: float, how: str) -> torch.Tensor:
    """A running buffer after ``batches``, updated one of the usual ways: the mean, the unbiased or the
    biased variance, with momentum the weight of the new value ("reversed": of the old one)."""
    value = torch.full((batches[0].shape[1],), start, dtype=torch.float64)
    stat, order = how.split("-")
    for x in batches:
        new = {"mean": x.mean(0), "unbiased": x.var(0, correction=1),
               "biased": x.var(0, correction=0)}[stat]
        value = value + (momentum if order == "right" else 1 - momentum) * (new - value)
    return value


def hand_written_layer(cls) -> None:
    """Check the learner's corrected hand-written ``BatchNorm1d`` class, ``cls(features)``: in training
    it must normalize with the biased batch variance and keep the unbiased one in ``running_var``, as
    ``torch.nn.BatchNorm1d`` does; in eval mode it normalizes with the running statistics. The layer
    runs beside PyTorch's on a stream of batches of 3, 4 and 16 examples."""
    name = "hand_written_layer"
    for seed, (m, c) in enumerate([(4, 5), (3, 6), (16, 4)]):
        try:
            layer = call(cls, c, name=name)
        except CheckFailed:
            raise
        except Exception as e:
            raise CheckFailed(say(en=f"{name}: creating the layer, {getattr(cls, '__name__', cls)}({c}), "
                                     f"raised {type(e).__name__}: {e}",
                                  zh=f"{name}：创建层 {getattr(cls, '__name__', cls)}({c}) 时抛出了 "
                                     f"{type(e).__name__}：{e}")) from e
        missing = [p for p in LAYER_PARTS if not isinstance(getattr(layer, p, None), torch.Tensor)]
        if missing or not isinstance(layer, torch.nn.Module):
            raise CheckFailed(say(
                en=f"{name}: expected a torch.nn.Module with {', '.join(LAYER_PARTS)}, as the buggy layer "
                   f"has; missing: {', '.join(missing) or 'torch.nn.Module'}",
                zh=f"{name}：应是一个带有 {', '.join(LAYER_PARTS)} 的 torch.nn.Module（与有错误的层一样）；"
                   f"缺少：{', '.join(missing) or 'torch.nn.Module'}"))
        momentum, eps = float(getattr(layer, "momentum", 0.1)), float(getattr(layer, "eps", 1e-5))
        ref = torch.nn.BatchNorm1d(c, eps=eps, momentum=momentum).double()
        layer = layer.double()
        gamma, beta = affine_params(c, seed)
        with torch.no_grad():
            for module in (layer, ref):
                module.weight.copy_(gamma)
                module.bias.copy_(beta)
        g = generator(seed + 500)
        scale = torch.logspace(-1, 1, c, dtype=torch.float64)[torch.randperm(c, generator=g)]
        shift = torch.randn(c, generator=g, dtype=torch.float64) * 3
        batches = [torch.randn(m, c, generator=g, dtype=torch.float64) * scale + shift for _ in range(12)]
        test = torch.randn(64, c, generator=g, dtype=torch.float64) * scale + shift

        layer.train()
        ref.train()
        for t, x in enumerate(batches):
            got = _layer_call(layer, x, name, "training")
            with torch.no_grad():
                want = ref(x)
                running_mean, running_var = ref.running_mean.clone(), ref.running_var.clone()
            norm = lambda **kw: gamma * _normalize(x, (0,), eps, **kw) + beta  # noqa: B023, E731
            _compare(name, (f"the training-mode output of batch {t + 1} (of {m} examples)",
                            f"第 {t + 1} 批（{m} 个样本）在训练模式下的输出"), got, want, [
                ("in training mode it normalizes with the unbiased variance: torch's x.var(0) divides by "
                 "m - 1 unless told correction=0, while batch norm normalizes with the biased one (the "
                 "paper's Algorithm 1, PyTorch)",
                 "训练模式下它用无偏方差做标准化：torch 的 x.var(0) 默认除以 m - 1（除非指定 correction=0），"
                 "而批标准化用有偏方差做标准化（论文的算法 1，PyTorch 也如此）", norm(unbiased=True)),
                ("eps is missing: divide by sqrt(var + eps)", "缺少 eps：应除以 sqrt(var + eps)",
                 norm(how="sqrt(var)")),
                ("gamma and beta are not applied", "没有用上 gamma 和 beta", _normalize(x, (0,), eps)),
                ("in training mode it normalizes with the running statistics; it should use the batch's",
                 "训练模式下它用滑动平均统计量做标准化；应该用这一批的统计量",
                 gamma * (x - running_mean) / torch.sqrt(running_var + eps) + beta),
            ], ("in training mode, gamma * (x - mean) / sqrt(biased var + eps) + beta over the batch",
                "训练模式下，对这一批算 gamma * (x - mean) / sqrt(有偏方差 + eps) + beta"))
        for buffer, start, stat in (("running_mean", 0.0, "mean"), ("running_var", 1.0, "unbiased")):
            got = _result(getattr(layer, buffer), name, gamma)
            wrong = [
                (f"{buffer} was never updated", f"{buffer} 从未更新", torch.full_like(gamma, start)),
                (f"momentum is reversed: {buffer} = (1 - momentum) * {buffer} + momentum * the batch's value",
                 f"动量用反了：应为 {buffer} = (1 - momentum) * {buffer} + momentum * 这一批的值",
                 _running(batches, momentum, start, f"{stat}-reversed")),
            ]
            if buffer == "running_var":
                wrong.insert(0, (
                    "it follows the biased batch variance. The running buffer estimates the population's "
                    "variance, so it averages the unbiased batch variance, m/(m - 1) times the biased one "
                    "(the paper's Algorithm 2, PyTorch): in training, normalize with the biased variance, "
                    "keep the unbiased one",
                    "它跟踪的是有偏的批方差。滑动平均缓冲区估计的是总体方差，所以它平均的是无偏的批方差，"
                    "即有偏方差的 m/(m - 1) 倍（论文的算法 2，PyTorch 也如此）：训练时用有偏方差做标准化，"
                    "缓冲区里保存无偏方差", _running(batches, momentum, start, "biased-right")))
            _compare(name, (f"{buffer} after {len(batches)} batches", f"{len(batches)} 批之后的 {buffer} 值"),
                     got, getattr(ref, buffer).detach(), wrong,
                     (f"{buffer} = (1 - momentum) * {buffer} + momentum * the batch's "
                      f"{'mean' if stat == 'mean' else 'unbiased variance'}",
                      f"{buffer} = (1 - momentum) * {buffer} + momentum * 这一批的"
                      f"{'均值' if stat == 'mean' else '无偏方差'}"))
        layer.eval()
        ref.eval()
        got = _layer_call(layer, test, name, "eval")
        with torch.no_grad():
            want = ref(test)
        _compare(name, ("the eval-mode output", "评估模式下的输出"), got, want, [
            ("in eval mode it normalizes with the batch's statistics; it should use the running ones",
             "评估模式下它用这一批的统计量做标准化；应该用滑动平均统计量",
             gamma * _normalize(test, (0,), eps) + beta),
        ], ("in eval mode, gamma * (x - running_mean) / sqrt(running_var + eps) + beta",
            "评估模式下，gamma * (x - running_mean) / sqrt(running_var + eps) + beta"))
    passed(name, say(en="as torch.nn.BatchNorm1d: the biased variance to normalize, the unbiased one in "
                        "the running buffer",
                     zh="与 torch.nn.BatchNorm1d 一致：用有偏方差做标准化，滑动平均缓冲区里保存无偏方差"))


def _closed_form_dx(dout, x, gamma, eps, dims=(0,), unbiased=False, paths=("mu", "var")):
    """dx of batch norm, optionally with a wrong variance, wrong sums, or paths left out."""
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, keepdim=True, correction=int(unbiased))
    inv_std = 1 / torch.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    dx_hat = dout * gamma
    dx = dx_hat
    if "mu" in paths:
        dx = dx - dx_hat.mean(dims, keepdim=True)
    if "var" in paths:
        dx = dx - x_hat * (dx_hat * x_hat).mean(dims, keepdim=True)
    return inv_std * dx


def _expect_tuple(out, n: int, name: str, what: tuple[str, str]) -> None:
    if not isinstance(out, tuple | list) or len(out) != n:
        raise CheckFailed(say(en=f"{name}: expected {what[0]}, got {type(out).__name__}",
                              zh=f"{name}：应返回{what[1]}，得到的是 {type(out).__name__}"))


def bn_backward(fn: Callable) -> None:
    """Check ``fn(dout, x, gamma, eps) -> (dx, dgamma, dbeta)`` for an (N, D) input."""
    name = "bn_backward"
    for seed, shape in enumerate([(5, 4), (16, 3), (6, 7)]):
        x = channel_data(shape, seed, offset=5)
        gamma, beta = affine_params(shape[1], seed)
        dout = torch.randn(shape, generator=generator(seed + 7), dtype=torch.float64)
        _, cache = F.batch_norm_forward(x, gamma, beta, EPS)
        ref = F.batch_norm_backward_fused(dout, cache)
        out = call(fn, dout.clone(), x.clone(), gamma.clone(), EPS, name=name)
        _expect_tuple(out, 3, name, ("a triple (dx, dgamma, dbeta)", "三元组 (dx, dgamma, dbeta)"))
        axis = ("one value per feature: sum over the batch, dim 0",
                "每个特征一个值：沿批这一维（第 0 维）求和")
        dx = _result(out[0], name, x)
        dgamma, dbeta = (_result(v, name, gamma, axis) for v in out[1:])
        dx_of = lambda **kw: _closed_form_dx(dout, x, gamma, EPS, **kw)  # noqa: B023, E731
        _compare(name, ("dx", "dx"), dx, ref[0], [
            ("it treats mu and sigma^2 as constants (dx = gamma * dout / sqrt(var + eps)), but x also "
             "reaches the output through mu and sigma^2: add those two paths",
             "它把 mu 和 sigma^2 当成了常数（dx = gamma * dout / sqrt(var + eps)），但 x 还经由 mu 和 "
             "sigma^2 影响输出：要加上这两条路径", dx_of(paths=())),
            ("it has the path through mu but not the one through sigma^2: the term "
             "-x_hat * mean(dx_hat * x_hat) is missing",
             "有经过 mu 的路径，却没有经过 sigma^2 的路径：缺少 -x_hat * mean(dx_hat * x_hat) 这一项",
             dx_of(paths=("mu",))),
            ("it has the path through sigma^2 but not the one through mu: the term -mean(dx_hat) is "
             "missing",
             "有经过 sigma^2 的路径，却没有经过 mu 的路径：缺少 -mean(dx_hat) 这一项",
             dx_of(paths=("var",))),
            (*UNBIASED, dx_of(unbiased=True)),
            ("eps is missing: the forward divides by sqrt(var + eps)",
             "缺少 eps：前向传播除以的是 sqrt(var + eps)", _closed_form_dx(dout, x, gamma, 0.0)),
            ("the factor gamma is missing: dL/dx_hat = gamma * dout",
             "缺少因子 gamma：dL/dx_hat = gamma * dout",
             _closed_form_dx(dout, x, torch.ones_like(gamma), EPS)),
            ("the means run over the wrong axis: they are per feature, over the batch (dim 0)",
             "均值沿错了轴：应对每个特征沿批这一维（第 0 维）计算",
             _closed_form_dx(dout, x, gamma, EPS, dims=(1,))),
        ], ("dx = gamma / sqrt(var + eps) * (dout - mean(dout) - x_hat * mean(dout * x_hat))",
            "dx = gamma / sqrt(var + eps) * (dout - mean(dout) - x_hat * mean(dout * x_hat))"))
        x_hat = cache.x_hat
        if _close(dgamma, ref[2]) and _close(dbeta, ref[1]):
            raise CheckFailed(say(en=f"{name}: dgamma and dbeta are swapped: dgamma = sum(dout * x_hat), "
                                     "dbeta = sum(dout)",
                                  zh=f"{name}：dgamma 和 dbeta 弄反了：dgamma = sum(dout * x_hat)，"
                                     "dbeta = sum(dout)"))
        _compare(name, ("dgamma", "dgamma"), dgamma, ref[1], [
            ("it sums dout alone: gamma multiplies x_hat, so dgamma = sum(dout * x_hat)",
             "只对 dout 求和：gamma 乘的是 x_hat，所以 dgamma = sum(dout * x_hat)", dout.sum(0)),
            ("it uses x instead of the normalized x_hat", "用了 x，而不是标准化后的 x_hat",
             (dout * x).sum(0)),
            ("it is a mean over the batch: the loss sums over it, so dgamma is a sum",
             "它是对批求的均值：损失对批求和，所以 dgamma 是求和", (dout * x_hat).mean(0)),
        ], ("dgamma = sum over the batch of dout * x_hat", "dgamma = 对批求和 dout * x_hat"))
        _compare(name, ("dbeta", "dbeta"), dbeta, ref[2], [
            ("it is a mean over the batch: the loss sums over it, so dbeta is a sum",
             "它是对批求的均值：损失对批求和，所以 dbeta 是求和", dout.mean(0)),
        ], ("dbeta = sum over the batch of dout", "dbeta = 对批求和 dout"))
    passed(name, say(en="dx through mu and sigma^2, dgamma and dbeta",
                     zh="dx 包含经过 mu 和 sigma^2 的路径，dgamma 和 dbeta 也正确"))


def _differences(f: Callable, x: torch.Tensor, dout: torch.Tensor, h: float, how: str) -> torch.Tensor:
    """Finite differences of ``sum(f() * dout)`` in ``x`` (``f`` reads ``x``), done a usual wrong way."""
    loss = lambda: (f() * dout).sum().item()  # noqa: E731
    base, grad, flat = loss(), torch.zeros_like(x), x.view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + h
        plus = loss()
        flat[i] = old - h
        minus = loss()
        flat[i] = old
        grad.view(-1)[i] = {"forward": (plus - base) / h, "backward": (base - minus) / h,
                            "over h": (plus - minus) / h, "half": (plus - base) / (2 * h)}[how]
    return grad


def _gradient_case(fn: Callable, name: str, shape: tuple[int, ...], h: float, seed: int) -> None:
    """One input of the ``numeric_gradient`` check: ``f`` is batch norm then tanh, reading ``x``."""
    g = generator(seed)
    spread = torch.rand(shape[1], generator=g, dtype=torch.float64) * 1.5 + 0.5
    x = torch.randn(shape, generator=g, dtype=torch.float64) * spread.reshape(-1, *[1] * (len(shape) - 2)) + 3
    gamma, beta = affine_params(shape[1], seed)
    dout = torch.randn(shape, generator=g, dtype=torch.float64)

    def on_copy(differences, *args):  # differences(f, t, *args), f reading t, a fresh copy of x
        t = x.clone()
        return differences(lambda: torch.tanh(F.batch_norm_forward(t, gamma, beta, EPS)[0]), t, *args)

    mine = x.clone()
    out = call(fn, lambda: torch.tanh(F.batch_norm_forward(mine, gamma, beta, EPS)[0]), mine,
               dout.clone(), h, name=name)
    if not torch.allclose(mine, x, rtol=1e-12, atol=1e-12):
        raise CheckFailed(say(
            en=f"{name}: x is left changed after the call: put each entry back after nudging it, or every "
               "later entry is differenced at a shifted point",
            zh=f"{name}：调用之后 x 被改变了：每个元素扰动之后都要放回原值，"
               "否则后面的元素都是在偏移了的点上做差分"))
    got = _result(out, name, x, ("the gradient has the shape of x", "梯度的形状与 x 相同"))
    one_sided = ("whose error is O(h): use the central difference (f(x + h) - f(x - h)) / (2h), whose "
                 "error is O(h^2)",
                 "其误差为 O(h)：应使用中心差分 (f(x + h) - f(x - h)) / (2h)，其误差为 O(h^2)")
    mistakes = [
        ("it ignores the argument h: nudge by the h it is given", "忽略了参数 h：应按传入的 h 扰动",
         on_copy(_reference_gradient, dout)),
        (f"it is a one-sided difference, (f(x + h) - f(x)) / h, {one_sided[0]}",
         f"这是单侧差分 (f(x + h) - f(x)) / h，{one_sided[1]}",
         on_copy(_differences, dout, h, "forward")),
        (f"it is a one-sided difference, (f(x) - f(x - h)) / h, {one_sided[0]}",
         f"这是单侧差分 (f(x) - f(x - h)) / h，{one_sided[1]}",
         on_copy(_differences, dout, h, "backward")),
        ("it divides by h: x + h and x - h are 2h apart, so divide by 2h",
         "除以的是 h：x + h 与 x - h 相距 2h，所以应除以 2h", on_copy(_differences, dout, h, "over h")),
        ("the gradient is zero: nudge one entry of x at a time, in place (x.view(-1)[i] = old + h): f() "
         "reads x itself, so it never sees a copy or x + h, and batch norm's output does not change when "
         "all of x moves at once",
         "梯度为零：应原地逐个扰动 x 的元素（x.view(-1)[i] = old + h）：f() 读取的是 x 本身，看不到副本或 "
         "x + h；而且 x 整体平移时批标准化的输出不变", torch.zeros_like(x)),
        ("it computes (f(x + h) - f(x)) / (2h): the second point must be x - h (if you kept the old value "
         "as x.view(-1)[i], that is a view that changes with x: keep a number, .item())",
         "它算的是 (f(x + h) - f(x)) / (2h)：第二个点应是 x - h（如果你把原值存成 x.view(-1)[i]，"
         "那是随 x 变化的视图：应保存一个数，用 .item()）", on_copy(_differences, dout, h, "half")),
        ("it differentiates sum(f()): the scalar is sum(f() * dout), the output weighted by dout",
         "它求的是 sum(f()) 的梯度：标量应是 sum(f() * dout)，即以 dout 加权的输出",
         on_copy(_reference_gradient, torch.ones_like(dout), h)),
    ]
    _compare(name, (f"the gradient for an input of shape {shape} with h={h:g}",
                    f"形状为 {shape}、h={h:g} 的输入的梯度"), got,
             on_copy(_reference_gradient, dout, h), mistakes,
             ("for each entry: set it to old + h, evaluate sum(f() * dout), set it to old - h, evaluate "
              "again, restore old; its gradient is (plus - minus) / (2h)",
              "对每个元素：设为 old + h，计算 sum(f() * dout)；设为 old - h，再算一次；恢复 old；"
              "它的梯度是 (plus - minus) / (2h)"))


def numeric_gradient(fn: Callable) -> None:
    """Check ``fn(f, x, dout, h) -> grad``: central differences of ``sum(f() * dout)``, ``f`` reading ``x``.

    ``f`` is a batch-norm layer followed by tanh, so that ``sum(f())`` depends on ``x``; a large ``h``
    sets the one-sided and mis-scaled differences apart from the central one.
    """
    name = "numeric_gradient"
    for seed, (shape, h) in enumerate([((6, 3), 0.1), ((3, 2, 2, 2), 0.1), ((5, 4), 1e-5)]):
        _gradient_case(fn, name, shape, h, seed)
    passed(name, say(en="central differences, one entry at a time, x restored",
                     zh="中心差分，逐个元素扰动，x 已恢复"))
