"""Exercise checks of Chapter 6, batch norm in practice: your own layer, the backward passes of
batch norm for images and of layer norm, a convnet's folded batch norm and ReLU thresholds, weight
decay on scale-invariant weights. (The checks of 06e to 06g are in :mod:`.training`.)

The references are PyTorch's own (``torch.nn.BatchNorm1d``, autograd through
``torch.nn.functional.batch_norm`` and ``layer_norm``), in float64; each check names the usual
mistakes it recognises.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as torch_F
from torch import nn

from ...lab.device import generator, shifted
from .core import CheckFailed, affine_params, call, channel_data, passed, run, say

__all__ = [
    "batch_norm_function",
    "bn_backward_spatial",
    "fold_bn",
    "layer_norm_backward",
    "my_batch_norm",
    "relu_threshold",
    "weight_angle",
]

EPS = 1e-3  # large enough that forgetting it shows


def _close(a, b, rtol: float = 1e-6, atol: float = 1e-8) -> bool:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol))


def _tensor(value, name: str, like: torch.Tensor, what: str) -> torch.Tensor:
    """The learner's value as a float64 tensor shaped like ``like``, or a failure naming the shape."""
    if value is None:
        raise CheckFailed(say(en=f"{name}: {what} is None; did you forget `return`?",
                              zh=f"{name}：{what}是 None；是不是忘了 `return`？"))
    t = torch.as_tensor(value).detach().double().cpu()
    if t.shape != like.shape:
        raise CheckFailed(say(en=f"{name}: {what} should have shape {tuple(like.shape)}, got "
                                 f"{tuple(t.shape)}",
                              zh=f"{name}：{what}的形状应为 {tuple(like.shape)}，得到的是 {tuple(t.shape)}"))
    return t


def _first_match(name: str, what: str, got, ref, mistakes, hint: str, **tol) -> None:
    """Pass if ``got`` matches ``ref``; else name the first mistake it matches, or give the hint."""
    if _close(got, ref, **tol):
        return
    for message, wrong in mistakes:
        if wrong is not None and _close(got, wrong, **tol):
            raise CheckFailed(say(en=f"{name}: {what} is wrong: {message}",
                                  zh=f"{name}：{what}不对：{message}"))
    if not torch.isfinite(torch.as_tensor(got)).all():
        raise CheckFailed(say(en=f"{name}: {what} contains NaN or inf",
                              zh=f"{name}：{what}中有 NaN 或 inf"))
    raise CheckFailed(say(en=f"{name}: {what} is wrong; {hint}", zh=f"{name}：{what}不对；{hint}"))


def _shape_of(shape) -> str:
    """'an input of shape (N, C)', in the learner's language."""
    return say(en=f"an input of shape {shape}", zh=f"形状为 {shape} 的输入")


def _norm_dx(dout, x, gamma, eps, dims, paths=("mu", "var"), unbiased=False, count=None):
    """dx of a normalization over ``dims`` (``gamma`` already broadcastable), or a usual wrong one:
    paths left out, the unbiased variance, or the means divided by a wrong ``count``."""
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, keepdim=True, correction=int(unbiased))
    inv_std = 1 / torch.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    dx_hat = dout * gamma
    m = count or math.prod(x.shape[d] for d in dims)
    dx = dx_hat
    if "mu" in paths:
        dx = dx - dx_hat.sum(dims, keepdim=True) / m
    if "var" in paths:
        dx = dx - x_hat * (dx_hat * x_hat).sum(dims, keepdim=True) / m
    return inv_std * dx


def _triple(out, name: str):
    if not isinstance(out, tuple | list) or len(out) != 3:
        raise CheckFailed(say(
            en=f"{name}: the function should return a triple (dx, dgamma, dbeta), got {type(out).__name__}",
            zh=f"{name}：函数应返回三元组 (dx, dgamma, dbeta)，得到的是 {type(out).__name__}"))
    return out


def _reference_grads(norm: Callable, x, gamma, beta, dout):
    """Gradients of ``sum(norm(x, gamma, beta) * dout)`` by autograd: (dx, dgamma, dbeta)."""
    leaves = [t.clone().requires_grad_(True) for t in (x, gamma, beta)]
    norm(*leaves).backward(dout)
    return tuple(t.grad for t in leaves)


# ---------------------------------------------------------------------------------------------
# The capstone: an autograd Function and a layer


def _bn_train(x, gamma, beta, eps=EPS):
    return torch_F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)


def _forward_mistakes(x, gamma, beta, eps):
    def norm(dims=(0,), unbiased=False, eps=eps):
        mean, var = x.mean(dims, keepdim=True), x.var(dims, keepdim=True, correction=int(unbiased))
        return (x - mean) / torch.sqrt(var + eps)

    return [
        (say(en="it uses the unbiased variance (divided by m - 1); the normalization uses the biased one",
             zh="用了无偏方差（除以 m - 1）；标准化用的是有偏方差"),
         gamma * norm(unbiased=True) + beta),
        (say(en=f"eps is missing: divide by sqrt(var + eps) (eps={eps:g} here)",
             zh=f"缺了 eps：应除以 sqrt(var + eps)（这里 eps={eps:g}）"), gamma * norm(eps=0.0) + beta),
        (say(en="the statistics are per example, over dim 1; batch norm takes them per feature, over "
                "the batch (dim 0)",
             zh="统计量是按样本在维度 1 上算的；批标准化按特征在整个批（维度 0）上计算"),
         gamma * norm(dims=(1,)) + beta),
        (say(en="gamma and beta are not applied: return gamma * x_hat + beta",
             zh="没有应用 gamma 和 beta：应返回 gamma * x_hat + beta"), norm()),
        (say(en="gamma and beta are swapped: gamma scales, beta shifts",
             zh="gamma 和 beta 颠倒了：gamma 负责缩放，beta 负责平移"), beta * norm() + gamma),
    ]


def _path_mistakes(dx_of, dims, over: tuple[str, str]):
    """The mistakes of a normalization's backward that leave out a path or use the unbiased variance;
    ``over`` says over what the means run, in English and Chinese."""
    en, zh = over
    return [
        (say(en=f"the path through mu is missing: the term -mean(dx_hat) over {en}",
             zh=f"缺了经过 mu 的路径：在{zh}上的 -mean(dx_hat) 项"), dx_of(dims, paths=("var",))),
        (say(en=f"the path through sigma^2 is missing: the term -x_hat * mean(dx_hat * x_hat) over {en}",
             zh=f"缺了经过 sigma^2 的路径：在{zh}上的 -x_hat * mean(dx_hat * x_hat) 项"),
         dx_of(dims, paths=("mu",))),
        (say(en="it treats mu and sigma^2 as constants; x also reaches the output through them",
             zh="把 mu 和 sigma^2 当成了常数；x 也经由它们影响输出"), dx_of(dims, paths=())),
        (say(en="it uses the unbiased variance; the forward normalizes with the biased one",
             zh="用了无偏方差；前向传播用有偏方差做标准化"), dx_of(dims, unbiased=True)),
    ]


def _no_gamma():
    return say(en="the factor gamma is missing: dL/dx_hat = gamma * dout",
               zh="缺了因子 gamma：dL/dx_hat = gamma * dout")


def _backward_mistakes(dout, x, gamma, eps):
    dx_of = partial(_norm_dx, dout, x, gamma, eps)
    return [*_path_mistakes(dx_of, (0,), ("the batch", "批")),
            (_no_gamma(), _norm_dx(dout, x, torch.ones_like(gamma), eps, (0,)))]


def _param_mistakes(dout, x_hat, x):
    a_sum = say(en="it is a mean over the batch; the gradient is a sum", zh="这是对批的平均；梯度应是求和")
    return {
        "dgamma": [(say(en="it sums dout alone; gamma multiplies x_hat, so dgamma = sum(dout * x_hat)",
                        zh="只对 dout 求和了；gamma 乘的是 x_hat，所以 dgamma = sum(dout * x_hat)"),
                    dout.sum(0)),
                   (say(en="it uses x instead of x_hat", zh="用了 x 而不是 x_hat"), (dout * x).sum(0)),
                   (a_sum, (dout * x_hat).mean(0))],
        "dbeta": [(a_sum, dout.mean(0)),
                  (say(en="it is sum(dout * x_hat), which is dgamma", zh="这是 sum(dout * x_hat)，即 dgamma"),
                   (dout * x_hat).sum(0))],
    }


def batch_norm_function(fn_class) -> None:
    """Check a ``torch.autograd.Function`` with ``apply(x, gamma, beta, eps) -> out``: batch norm's
    training forward for (N, C), and a backward returning ``(dx, dgamma, dbeta, None)``."""
    name = "batch_norm_function"
    if not (isinstance(fn_class, type) and issubclass(fn_class, torch.autograd.Function)):
        raise CheckFailed(say(en=f"{name}: expected a subclass of torch.autograd.Function, got {fn_class!r}",
                              zh=f"{name}：应是 torch.autograd.Function 的子类，得到的是 {fn_class!r}"))
    for seed, shape in enumerate([(8, 4), (16, 3), (5, 6)]):
        x = channel_data(shape, seed, offset=3)
        gamma, beta = affine_params(shape[1], seed)
        dout = torch.randn(shape, generator=generator(seed + 7), dtype=torch.float64)
        what = _shape_of(shape)
        leaves = [t.clone().requires_grad_(True) for t in (x, gamma, beta)]
        out = run(fn_class.apply, *leaves, EPS, name=name,
                  what=say(en=f"forward on {what}", zh=f"对{what}做前向传播"))
        if isinstance(out, tuple | list):
            raise CheckFailed(say(
                en=f"{name}: forward should return the output tensor only, got a {type(out).__name__} "
                   f"of {len(out)} items",
                zh=f"{name}：forward 应只返回输出张量，得到的是含 {len(out)} 项的 {type(out).__name__}"))
        ref = _bn_train(x, gamma, beta)
        output = say(en=f"the output for {what}", zh=f"{what}的输出")
        got = _tensor(out, name, ref, output)
        _first_match(name, output, got, ref, _forward_mistakes(x, gamma, beta, EPS),
                     say(en="out = gamma * (x - mu) / sqrt(var + eps) + beta, per feature over the batch",
                         zh="out = gamma * (x - mu) / sqrt(var + eps) + beta，按特征在批上计算"))
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            raise CheckFailed(say(
                en=f"{name}: the output is not connected to autograd; return it from forward and call "
                   f"the Function as BatchNormFunction.apply(...)",
                zh=f"{name}：输出没有接入自动求导；请从 forward 返回它，并以 "
                   f"BatchNormFunction.apply(...) 调用这个 Function"))
        try:
            call(out.backward, dout, name=name)  # the guard of write-your-own covers backward too
        except CheckFailed:
            raise
        except RuntimeError as e:
            if "incorrect number of gradients" in str(e):
                raise CheckFailed(say(
                    en=f"{name}: backward must return one gradient per input of forward, in order: dx, "
                       f"dgamma, dbeta and None for eps ({e})",
                    zh=f"{name}：backward 必须为 forward 的每个输入按顺序返回一个梯度：dx、dgamma、"
                       f"dbeta，eps 对应 None（{e}）")) from e
            raise CheckFailed(say(en=f"{name}: backward raised RuntimeError: {e}",
                                  zh=f"{name}：backward 抛出了 RuntimeError：{e}")) from e
        except Exception as e:
            raise CheckFailed(say(en=f"{name}: backward raised {type(e).__name__}: {e}",
                                  zh=f"{name}：backward 抛出了 {type(e).__name__}：{e}")) from e
        ref_dx, ref_dgamma, ref_dbeta = _reference_grads(_bn_train, x, gamma, beta, dout)
        for leaf, label in zip(leaves, ("dx", "dgamma", "dbeta"), strict=True):
            if leaf.grad is None:
                raise CheckFailed(say(
                    en=f"{name}: backward returned None for {label}; return the gradient of every "
                       f"tensor input (None only for eps)",
                    zh=f"{name}：backward 对 {label} 返回了 None；"
                       f"每个张量输入都要返回梯度（只有 eps 用 None）"))
        dx, dgamma, dbeta = (_tensor(v.grad, name, r, lbl) for v, r, lbl in
                             zip(leaves, (x, gamma, beta), ("dx", "dgamma", "dbeta"), strict=True))
        if _close(dgamma, ref_dbeta) and _close(dbeta, ref_dgamma):
            raise CheckFailed(say(
                en=f"{name}: dgamma and dbeta are swapped: return dx, dgamma, dbeta in the order of "
                   f"forward's inputs x, gamma, beta",
                zh=f"{name}：dgamma 和 dbeta 颠倒了："
                   f"请按 forward 输入 x、gamma、beta 的顺序返回 dx、dgamma、dbeta"))
        _first_match(name, say(en=f"dx for {what}", zh=f"{what}的 dx"), dx, ref_dx,
                     _backward_mistakes(dout, x, gamma, EPS),
                     "dx = gamma / sqrt(var + eps) * (dout - mean(dout) - x_hat * mean(dout * x_hat))")
        x_hat = (x - x.mean(0)) / torch.sqrt(x.var(0, correction=0) + EPS)
        mistakes = _param_mistakes(dout, x_hat, x)
        _first_match(name, "dgamma", dgamma, ref_dgamma, mistakes["dgamma"], "dgamma = sum(dout * x_hat)")
        _first_match(name, "dbeta", dbeta, ref_dbeta, mistakes["dbeta"], "dbeta = sum(dout)")
    passed(name, say(en="output and gradients as autograd through torch's",
                     zh="输出和梯度与经由 torch 实现的自动求导一致"))


STATE_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _construct(cls, name: str, *args, **kw) -> nn.Module:
    call_args = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kw.items())])
    layer = run(lambda: cls(*args, **kw), name=name, what=f"{cls.__name__}({call_args})")
    if not isinstance(layer, nn.Module):
        raise CheckFailed(say(en=f"{name}: the layer should be a torch.nn.Module, got {type(layer).__name__}",
                              zh=f"{name}：层应是 torch.nn.Module，得到的是 {type(layer).__name__}"))
    return layer


def _check_layout(layer: nn.Module, name: str, c: int) -> None:
    """Parameters, buffers and their initial values, as torch.nn.BatchNorm1d has them."""
    params, buffers = dict(layer.named_parameters()), dict(layer.named_buffers())
    for key in ("weight", "bias"):
        if key not in params:
            where = say(en="a buffer", zh="一个缓冲区") if key in buffers else say(en="missing", zh="缺失")
            raise CheckFailed(say(
                en=f"{name}: `{key}` is {where}; it must be an nn.Parameter (gamma is `weight`, beta is "
                   f"`bias`, as PyTorch names them), so it is trained",
                zh=f"{name}：`{key}` {'是' if key in buffers else ''}{where}；它必须是 nn.Parameter（按 "
                   f"PyTorch 的命名，gamma 是 `weight`，beta 是 `bias`），这样它才会被训练"))
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        if key in params:
            raise CheckFailed(say(
                en=f"{name}: `{key}` is an nn.Parameter, so the optimizer would train it; register it "
                   f"with self.register_buffer: saved in the state_dict, not trained",
                zh=f"{name}：`{key}` 是 nn.Parameter，优化器会训练它；请用 self.register_buffer "
                   f"注册它：保存在 state_dict 里，但不参与训练"))
        if key not in buffers:
            extra = say(en=" PyTorch's BatchNorm counts the training batches in it (it saves it in the "
                           "state_dict and needs it for momentum=None)",
                        zh="PyTorch 的 BatchNorm 用它统计训练过的批数（它保存在 state_dict 中，"
                           "momentum=None 时要用到）") if key == "num_batches_tracked" else ""
            raise CheckFailed(say(en=f"{name}: no buffer `{key}`: register it with self.register_buffer."
                                     f"{extra}",
                                  zh=f"{name}：没有缓冲区 `{key}`："
                                     f"请用 self.register_buffer 注册它。{extra}"))
    expected = {"weight": torch.ones(c), "bias": torch.zeros(c), "running_mean": torch.zeros(c),
                "running_var": torch.ones(c)}
    state = layer.state_dict()
    for key, value in expected.items():
        got = state[key]
        if got.shape != value.shape:
            raise CheckFailed(say(
                en=f"{name}: `{key}` should have shape ({c},), one value per feature, got {tuple(got.shape)}",
                zh=f"{name}：`{key}` 的形状应为 ({c},)，每个特征一个值，得到的是 {tuple(got.shape)}"))
        if not torch.equal(got.detach().float().cpu(), value):
            raise CheckFailed(say(
                en=f"{name}: `{key}` should start at {value[0].item():g} for every feature (as "
                   f"PyTorch's), got {got.tolist()}",
                zh=f"{name}：`{key}` 对每个特征的初始值应为 {value[0].item():g}（与 PyTorch 的一样），"
                   f"得到的是 {got.tolist()}"))
    count = state["num_batches_tracked"]
    if count.dtype != torch.long or count.dim() != 0 or count.item() != 0:
        raise CheckFailed(say(
            en=f"{name}: num_batches_tracked should be a 0-d long tensor starting at 0 "
               f"(torch.tensor(0, dtype=torch.long)), got {count!r}",
            zh=f"{name}：num_batches_tracked 应是从 0 开始的 0 维 long 张量"
               f"（torch.tensor(0, dtype=torch.long)），得到的是 {count!r}"))
    extra = sorted(set(state) - set(STATE_KEYS))
    if extra:
        raise CheckFailed(say(
            en=f"{name}: the state_dict has keys PyTorch's does not: {extra}; keep only "
               f"{list(STATE_KEYS)} so that the two load each other's state",
            zh=f"{name}：state_dict 里有 PyTorch 的没有的键：{extra}；只保留 {list(STATE_KEYS)}，"
               f"两者才能互相加载对方的状态"))


def _torch_twin(layer: nn.Module, c: int, momentum) -> nn.BatchNorm1d:
    ref = nn.BatchNorm1d(c, eps=EPS, momentum=momentum).double()
    ref.load_state_dict(layer.state_dict())
    return ref


def _set_eps(layer: nn.Module, name: str) -> None:
    if not hasattr(layer, "eps"):
        raise CheckFailed(say(
            en=f"{name}: the layer has no attribute `eps`; store the constructor's eps as self.eps (as "
               f"PyTorch's does)",
            zh=f"{name}：层没有属性 `eps`；请把构造函数的 eps 存为 self.eps（与 PyTorch 的一样）"))
    layer.eps = EPS


def _compare_step(name, step, what, layer, ref, x, dout, momentum) -> None:
    """One training step of the learner's layer and torch's on the same batch."""
    old_mean, old_var = layer.running_mean.detach().clone(), layer.running_var.detach().clone()
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    out = run(layer, xs[0], name=name, what=say(en=f"the forward pass in training mode ({what})",
                                                zh=f"训练模式下的前向传播（{what}）"))
    expected = ref(xs[1])
    got = _tensor(out, name, expected, say(en=f"the training-mode output at step {step} ({what})",
                                           zh=f"第 {step} 步训练模式的输出（{what}）"))
    if not _close(got, expected):
        eval_like = torch_F.batch_norm(x, old_mean, old_var, ref.weight, ref.bias, False, 0.0, EPS)
        if _close(got, eval_like):
            raise CheckFailed(say(
                en=f"{name}: in training mode the layer normalizes with the running statistics; it must "
                   f"use the batch's own ({what})",
                zh=f"{name}：训练模式下这个层用滑动平均统计量做标准化；它必须用这一批自己的统计量（{what}）"))
        raise CheckFailed(say(
            en=f"{name}: the training-mode output differs from torch.nn.BatchNorm1d's at step {step} "
               f"({what}); does the layer call your BatchNormFunction with self.weight, self.bias and "
               f"self.eps?",
            zh=f"{name}：第 {step} 步训练模式的输出与 torch.nn.BatchNorm1d 的不同（{what}）；这个层是否用 "
               f"self.weight、self.bias 和 self.eps 调用了你的 BatchNormFunction？"))
    run(out.backward, dout, name=name, what=say(en=f"the backward pass ({what})", zh=f"反向传播（{what}）"))
    expected.backward(dout)
    for label, mine, theirs in (("dx", xs[0].grad, xs[1].grad), ("weight.grad", layer.weight.grad,
                                ref.weight.grad), ("bias.grad", layer.bias.grad, ref.bias.grad)):
        if mine is None or not _close(mine, theirs):
            raise CheckFailed(say(
                en=f"{name}: {label} differs from torch.nn.BatchNorm1d's at step {step} ({what}); check "
                   f"the backward of your BatchNormFunction",
                zh=f"{name}：第 {step} 步的 {label} 与 torch.nn.BatchNorm1d 的不同（{what}）；请检查你的 "
                   f"BatchNormFunction 的 backward"))
    _compare_running(name, step, what, layer, ref, x, old_mean, old_var, momentum)


def _compare_running(name, step, what, layer, ref, x, old_mean, old_var, momentum) -> None:
    count = layer.num_batches_tracked
    if int(count) != int(ref.num_batches_tracked):
        raise CheckFailed(say(
            en=f"{name}: num_batches_tracked is {int(count)} after {step} training batches; add 1 for "
               f"every batch in training mode",
            zh=f"{name}：训练了 {step} 个批之后 num_batches_tracked 是 {int(count)}"
               f"；训练模式下每个批都要加 1"))
    k = 1.0 / step if momentum is None else momentum
    mu, var_b, var_u = x.mean(0), x.var(0, correction=0), x.var(0)
    new_mean, new_var = layer.running_mean.detach(), layer.running_var.detach()
    if _close(new_mean, ref.running_mean) and _close(new_var, ref.running_var):
        return

    def blend(old, new, w):
        return (1 - w) * old + w * new

    mistakes = [
        ((old_mean, old_var), say(en="the running statistics were not updated in training mode",
                                  zh="训练模式下没有更新滑动平均统计量")),
        ((mu, var_u), say(en="the running statistics were replaced by the batch's; blend them: "
                             "(1 - momentum) * running + momentum * batch",
                          zh="滑动平均统计量被这一批的统计量直接替换了；应当混合："
                             "(1 - momentum) * running + momentum * batch")),
        ((blend(old_mean, mu, 1 - k), blend(old_var, var_u, 1 - k)),
         say(en="momentum is reversed: PyTorch's momentum weighs the NEW batch, running = (1 - momentum) "
                "* running + momentum * batch (Keras and CS231n weigh the old value)",
             zh="动量反了：PyTorch 的 momentum 是新一批的权重，running = (1 - momentum) * running + "
                "momentum * batch（Keras 和 CS231n 的动量是旧值的权重）")),
        ((blend(old_mean, mu, k), blend(old_var, var_b, k)),
         say(en="running_var got the biased batch variance; PyTorch stores the unbiased one, "
                "x.var(0, unbiased=True), while it normalizes with the biased one",
             zh="running_var 存的是这一批的有偏方差；PyTorch 存的是无偏方差 x.var(0, unbiased=True)，"
                "而标准化时用的是有偏方差")),
        ((blend(old_mean, mu, k), blend(old_var, var_b.sqrt(), k)),
         say(en="running_var got the standard deviation; it stores the (unbiased) variance",
             zh="running_var 存的是标准差；它应存（无偏）方差")),
    ]
    if momentum is None:
        mistakes += [
            ((blend(old_mean, mu, 0.1), blend(old_var, var_u, 0.1)),
             say(en="with momentum=None PyTorch keeps a cumulative average: weight 1 / num_batches_tracked "
                    "for the new batch, not a fixed 0.1",
                 zh="momentum=None 时 PyTorch 维护的是累积平均：新一批的权重是 1 / num_batches_tracked，"
                    "而不是固定的 0.1")),
            ((blend(old_mean, mu, 1 / (step + 1)), blend(old_var, var_u, 1 / (step + 1))),
             say(en="with momentum=None the weight of the new batch is 1 / num_batches_tracked, counted "
                    "after this batch was added (1 for the first batch)",
                 zh="momentum=None 时新一批的权重是 1 / num_batches_tracked，计数要在加上这一批之后"
                    "（第一批的权重是 1）")),
        ]
    for (wrong_mean, wrong_var), message in mistakes:
        if _close(new_mean, wrong_mean) and _close(new_var, wrong_var):
            raise CheckFailed(say(en=f"{name}: {message} (step {step}, {what})",
                                  zh=f"{name}：{message}（第 {step} 步，{what}）"))
    part = "running_mean" if not _close(new_mean, ref.running_mean) else "running_var"
    raise CheckFailed(say(en=f"{name}: {part} differs from torch.nn.BatchNorm1d's after step {step} ({what})",
                          zh=f"{name}：第 {step} 步之后 {part} 与 torch.nn.BatchNorm1d 的不同（{what}）"))


def _compare_eval(name, what, layer, ref, x) -> None:
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.eval()
    ref.eval()
    with torch.no_grad():
        got = run(layer, x.clone(), name=name, what=say(en=f"the forward pass in eval mode ({what})",
                                                        zh=f"评估模式下的前向传播（{what}）"))
        expected = ref(x)
    output = say(en=f"the eval-mode output ({what})", zh=f"评估模式的输出（{what}）")
    got = _tensor(got, name, expected, output)
    w, b, rm, rv = (before[k] for k in ("weight", "bias", "running_mean", "running_var"))
    mistakes = [
        (say(en="eval mode normalizes with the batch's statistics, as in training; it must use "
                "running_mean and running_var, so each output depends on its own input only",
             zh="评估模式和训练时一样用了这一批的统计量做标准化；它必须用 running_mean 和 running_var，"
                "这样每个输出只取决于它自己的输入"),
         torch_F.batch_norm(x, None, None, w, b, True, 0.0, EPS)),
        (say(en="eps is missing in eval mode: divide by sqrt(running_var + eps)",
             zh="评估模式下缺了 eps：应除以 sqrt(running_var + eps)"), w * (x - rm) / rv.sqrt() + b),
        (say(en="eval mode divides by running_var; divide by sqrt(running_var + eps)",
             zh="评估模式除以的是 running_var；应除以 sqrt(running_var + eps)"),
         w * (x - rm) / (rv + EPS) + b),
        (say(en="eval mode does not apply weight and bias", zh="评估模式没有应用 weight 和 bias"),
         (x - rm) / (rv + EPS).sqrt()),
    ]
    _first_match(name, output, got, expected, mistakes,
                 say(en="eval mode: weight * (x - running_mean) / sqrt(running_var + eps) + bias",
                     zh="评估模式：weight * (x - running_mean) / sqrt(running_var + eps) + bias"))
    moved = [k for k, v in layer.state_dict().items() if not torch.equal(v, before[k])]
    if moved:
        raise CheckFailed(say(
            en=f"{name}: an eval-mode forward pass changed {moved}; in eval mode the buffers are read, "
               f"never updated ({what})",
            zh=f"{name}：评估模式下的一次前向传播改变了 {moved}；"
               f"评估模式只读取缓冲区，从不更新它们（{what}）"))


def _load_both_ways(cls, name: str) -> None:
    """torch's state_dict loads into the learner's layer and back, and both then agree in eval."""
    g = generator(5)
    ref = nn.BatchNorm1d(4, eps=EPS).double()
    with torch.no_grad():
        for t in (ref.weight, ref.bias, ref.running_mean):
            t.copy_(torch.randn(4, generator=g, dtype=torch.float64))
        ref.running_var.copy_(torch.rand(4, generator=g, dtype=torch.float64) + 0.5)
        ref.num_batches_tracked.fill_(7)
    layer = _construct(cls, name, 4).double()
    _set_eps(layer, name)
    try:
        layer.load_state_dict(ref.state_dict())
    except RuntimeError as e:
        raise CheckFailed(say(en=f"{name}: your layer cannot load torch.nn.BatchNorm1d's state_dict: {e}",
                              zh=f"{name}：你的层无法加载 torch.nn.BatchNorm1d 的 state_dict：{e}")) from e
    if int(layer.num_batches_tracked) != 7:
        raise CheckFailed(say(
            en=f"{name}: after loading PyTorch's state_dict num_batches_tracked is "
               f"{int(layer.num_batches_tracked)}, not 7",
            zh=f"{name}：加载 PyTorch 的 state_dict 之后 num_batches_tracked 是 "
               f"{int(layer.num_batches_tracked)}，而不是 7"))
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    _compare_eval(name, say(en="after loading PyTorch's state_dict", zh="加载 PyTorch 的 state_dict 之后"),
                  layer, ref, x)
    back = nn.BatchNorm1d(4, eps=EPS).double()
    back.load_state_dict(layer.state_dict())
    if not all(torch.equal(back.state_dict()[k], ref.state_dict()[k]) for k in STATE_KEYS):
        raise CheckFailed(say(
            en=f"{name}: PyTorch's layer loaded from your state_dict differs from the original",
            zh=f"{name}：从你的 state_dict 加载的 PyTorch 层与原来的不同"))


def _tiny_network(layer: nn.Module, seed: int) -> nn.Sequential:
    torch.manual_seed(shifted(seed))
    return nn.Sequential(nn.Linear(5, 6, bias=False), layer, nn.ReLU(), nn.Linear(6, 3)).double()


def _train_together(cls, name: str, steps: int = 20) -> None:
    """A small network with the learner's layer and the same one with torch's, trained side by side."""
    ours = _tiny_network(_construct(cls, name, 6), seed=3)
    _set_eps(ours[1], name)
    theirs = _tiny_network(nn.BatchNorm1d(6, eps=EPS), seed=3)
    theirs.load_state_dict(ours.state_dict())
    g = generator(11)
    opts = [torch.optim.SGD(net.parameters(), lr=0.5) for net in (ours, theirs)]
    for step in range(1, steps + 1):
        x = torch.randn(8, 5, generator=g, dtype=torch.float64) * 2 + 1
        y = torch.randint(0, 3, (8,), generator=g)
        losses = []
        for net, opt in zip((ours, theirs), opts, strict=True):
            net.train()
            loss = torch_F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if abs(losses[0] - losses[1]) > 1e-9 * max(1.0, abs(losses[1])):
            raise CheckFailed(say(
                en=f"{name}: a network trained with your layer drifts from the same network with "
                   f"torch.nn.BatchNorm1d at step {step} (loss {losses[0]:.6f} vs {losses[1]:.6f})",
                zh=f"{name}：用你的层训练的网络在第 {step} 步偏离了用 torch.nn.BatchNorm1d 的同一网络"
                   f"（损失 {losses[0]:.6f} 对 {losses[1]:.6f}）"))
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        if not _close(ours(x), theirs(x)):
            raise CheckFailed(say(
                en=f"{name}: after {steps} training steps the two networks disagree in eval mode: "
                   f"compare the running statistics",
                zh=f"{name}：训练 {steps} 步之后两个网络在评估模式下不一致：请比较滑动平均统计量"))


def my_batch_norm(cls) -> None:
    """Check a layer class ``cls(num_features, eps=1e-5, momentum=0.1)`` against ``torch.nn.BatchNorm1d``
    for (N, C) inputs: parameters and buffers, training steps (output, gradients, running statistics,
    ``momentum=None``), eval mode, ``state_dict`` both ways, and a small network trained with it."""
    name = "my_batch_norm"
    if not isinstance(cls, type):
        raise CheckFailed(say(en=f"{name}: expected a class (an nn.Module subclass), got {cls!r}",
                              zh=f"{name}：应是一个类（nn.Module 的子类），得到的是 {cls!r}"))
    _check_layout(_construct(cls, name, 5), name, 5)
    for seed, momentum in enumerate((0.1, 0.3, None)):
        layer = _construct(cls, name, 5, momentum=momentum).double()
        _set_eps(layer, name)
        g = generator(seed)
        with torch.no_grad():  # start from non-trivial parameters
            layer.weight.copy_(torch.rand(5, generator=g, dtype=torch.float64) + 0.5)
            layer.bias.copy_(torch.randn(5, generator=g, dtype=torch.float64))
        ref = _torch_twin(layer, 5, momentum)
        what = f"momentum={momentum}"
        layer.train()
        ref.train()
        for step in range(1, 4):
            m = (8, 3, 16)[step - 1]
            x = channel_data((m, 5), 10 * seed + step, offset=3)
            dout = torch.randn(m, 5, generator=g, dtype=torch.float64)
            _compare_step(name, step, say(en=f"{what}, batch of {m}", zh=f"{what}，批大小 {m}"),
                          layer, ref, x, dout, momentum)
        _compare_eval(name, what, layer, ref, channel_data((7, 5), 99, offset=3))
    _load_both_ways(cls, name)
    _train_together(cls, name)
    passed(name, say(en="as torch.nn.BatchNorm1d, step by step and in a network",
                     zh="逐步比较以及在网络中，都与 torch.nn.BatchNorm1d 一致"))


# ---------------------------------------------------------------------------------------------
# Backward passes for images and for layer norm


def _per_channel_shape(out, shape, name, bad_shapes, en, zh):
    """A parameter gradient of a wrong, recognisable shape (per position, per example), named."""
    for value, label in zip(out[1:], ("dgamma", "dbeta"), strict=True):
        t = torch.as_tensor(value) if value is not None else None
        if t is not None and t.shape in bad_shapes:
            raise CheckFailed(say(en=f"{name}: {label} has shape {tuple(t.shape)}; {en}",
                                  zh=f"{name}：{label} 的形状是 {tuple(t.shape)}；{zh}"))


def bn_backward_spatial(fn: Callable) -> None:
    """Check ``fn(dout, x, gamma, eps) -> (dx, dgamma, dbeta)`` for an (N, C, H, W) input."""
    name = "bn_backward_spatial"
    for seed, shape in enumerate([(4, 3, 5, 5), (2, 4, 3, 6), (6, 2, 2, 3)]):
        x = channel_data(shape, seed, offset=3)
        gamma, beta = affine_params(shape[1], seed)
        dout = torch.randn(shape, generator=generator(seed + 7), dtype=torch.float64)
        what = _shape_of(shape)
        out = _triple(run(fn, dout.clone(), x.clone(), gamma.clone(), EPS, name=name, what=what), name)
        ref_dx, ref_dgamma, ref_dbeta = _reference_grads(_bn_train, x, gamma, beta, dout)
        _per_channel_shape(
            out, shape, name, ((shape[1], shape[2], shape[3]), (shape[0], shape[1])),
            en=f"gamma and beta have one value per channel, so sum over N, H and W: shape ({shape[1]},)",
            zh=f"gamma 和 beta 每个通道一个值，所以要在 N、H、W 上求和：形状应为 ({shape[1]},)")
        dx, dgamma, dbeta = (_tensor(v, name, r, lbl) for v, r, lbl in
                             zip(out, (x, gamma, beta), ("dx", "dgamma", "dbeta"), strict=True))
        dx_of = partial(_norm_dx, dout, x, gamma.reshape(1, -1, 1, 1), EPS)
        nhw = (0, 2, 3)
        _first_match(name, say(en=f"dx for {what}", zh=f"{what}的 dx"), dx, ref_dx, [
            (say(en="the sums run over N only, one mean per position: batch norm for images takes one "
                    "mean and variance per channel, so sum over (N, H, W)",
                 zh="求和只在 N 上进行，每个位置一个均值：图像的批标准化每个通道只有一个均值和方差，"
                    "所以要在 (N, H, W) 上求和"), dx_of((0,))),
            (say(en="the sums run over (H, W) for each example (that is instance norm): sum over (N, H, W)",
                 zh="求和是对每个样本在 (H, W) 上进行的（那是实例标准化）：应在 (N, H, W) 上求和"),
             dx_of((2, 3))),
            (say(en="the sums run over (N, H, W) but are divided by N: there are m = N * H * W values "
                    "per channel",
                 zh="在 (N, H, W) 上求和，却除以了 N：每个通道有 m = N * H * W 个值"),
             dx_of(nhw, count=shape[0])),
            *_path_mistakes(dx_of, nhw, ("(N, H, W)", " (N, H, W) ")),
        ], say(en="the 2D formula holds with every mean taken over (N, H, W), m = N * H * W",
               zh="二维输入的公式照样成立，只是每个均值都在 (N, H, W) 上取，m = N * H * W"))
        x_hat = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(x.var((0, 2, 3), keepdim=True,
                                                                           correction=0) + EPS)
        a_sum = say(en="it is a mean; the gradient is a sum over (N, H, W)",
                    zh="这是平均；梯度应是在 (N, H, W) 上的求和")
        _first_match(name, "dgamma", dgamma, ref_dgamma, [
            (say(en="it sums dout alone; dgamma = sum(dout * x_hat)",
                 zh="只对 dout 求和了；dgamma = sum(dout * x_hat)"), dout.sum((0, 2, 3))),
            (a_sum, (dout * x_hat).mean((0, 2, 3))),
        ], say(en="dgamma = sum over (N, H, W) of dout * x_hat",
               zh="dgamma = 在 (N, H, W) 上对 dout * x_hat 求和"))
        _first_match(name, "dbeta", dbeta, ref_dbeta, [(a_sum, dout.mean((0, 2, 3)))],
                     say(en="dbeta = sum over (N, H, W) of dout", zh="dbeta = 在 (N, H, W) 上对 dout 求和"))
    passed(name, say(en="sums over (N, H, W), m = N * H * W, as autograd",
                     zh="在 (N, H, W) 上求和，m = N * H * W，与自动求导一致"))


def _layer_norm(x, gamma, beta, eps=EPS):
    return torch_F.layer_norm(x, (x.shape[-1],), gamma, beta, eps)


def layer_norm_backward(fn: Callable) -> None:
    """Check ``fn(dout, x, gamma, eps) -> (dx, dgamma, dbeta)`` of layer norm over the last dim of
    an (N, D) input, ``gamma`` and ``beta`` of shape (D,)."""
    name = "layer_norm_backward"
    for seed, shape in enumerate([(5, 8), (3, 4), (7, 6)]):
        x = channel_data(shape, seed, offset=3, channel_dim=0)  # examples on very different scales
        gamma, beta = affine_params(shape[1], seed)
        dout = torch.randn(shape, generator=generator(seed + 7), dtype=torch.float64)
        what = _shape_of(shape)
        out = _triple(run(fn, dout.clone(), x.clone(), gamma.clone(), EPS, name=name, what=what), name)
        ref_dx, ref_dgamma, ref_dbeta = _reference_grads(_layer_norm, x, gamma, beta, dout)
        _per_channel_shape(
            out, shape, name, ((shape[0],),),
            en=f"one value per example; gamma and beta have one value per feature, so sum over the "
               f"batch (dim 0): shape ({shape[1]},)",
            zh=f"每个样本一个值；gamma 和 beta 每个特征一个值，"
               f"所以要在批（维度 0）上求和：形状应为 ({shape[1]},)")
        dx, dgamma, dbeta = (_tensor(v, name, r, lbl) for v, r, lbl in
                             zip(out, (x, gamma, beta), ("dx", "dgamma", "dbeta"), strict=True))
        dx_of = partial(_norm_dx, dout, x, gamma, EPS)
        _first_match(name, say(en=f"dx for {what}", zh=f"{what}的 dx"), dx, ref_dx, [
            (say(en="the means run over the batch (dim 0): that is batch norm's backward; layer norm "
                    "normalizes each example over its features, so the means run over dim 1",
                 zh="均值是在批（维度 0）上取的：那是批标准化的反向传播；层标准化对每个样本在它的特征上"
                    "做标准化，所以均值应在维度 1 上取"), dx_of((0,))),
            *_path_mistakes(dx_of, (1,), ("the features", "特征")),
            (_no_gamma(), _norm_dx(dout, x, torch.ones_like(gamma), EPS, (1,))),
        ], say(en="dx = inv_std * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)), means over "
                  "dim 1, dx_hat = gamma * dout",
               zh="dx = inv_std * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))，均值在维度 1 "
                  "上取，dx_hat = gamma * dout"))
        x_hat = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True, correction=0) + EPS)
        a_sum = say(en="it is a mean; the gradient is a sum over the batch",
                    zh="这是平均；梯度应是在批上的求和")
        _first_match(name, "dgamma", dgamma, ref_dgamma, [
            (say(en="it sums dout alone; dgamma = sum over the batch of dout * x_hat",
                 zh="只对 dout 求和了；dgamma = 在批上对 dout * x_hat 求和"), dout.sum(0)),
            (say(en="it uses batch norm's x_hat (statistics over the batch); layer norm's x_hat is "
                    "normalized per example",
                 zh="用了批标准化的 x_hat（在批上的统计量）；层标准化的 x_hat 是逐样本标准化的"),
             (dout * _normalized(x, 0)).sum(0)),
            (a_sum, (dout * x_hat).mean(0)),
        ], say(en="dgamma = sum over the batch (dim 0) of dout * x_hat",
               zh="dgamma = 在批（维度 0）上对 dout * x_hat 求和"))
        _first_match(name, "dbeta", dbeta, ref_dbeta, [(a_sum, dout.mean(0))],
                     say(en="dbeta = sum over the batch (dim 0) of dout",
                         zh="dbeta = 在批（维度 0）上对 dout 求和"))
    passed(name, say(en="means over the features, as autograd", zh="均值在特征上取，与自动求导一致"))


def _normalized(x, dim):
    return (x - x.mean(dim, keepdim=True)) / torch.sqrt(x.var(dim, keepdim=True, correction=0) + EPS)


# ---------------------------------------------------------------------------------------------
# Weight decay on scale-invariant weights


def _scalar(value, name: str, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as e:
        raise CheckFailed(say(en=f"{name}: expected a number for {what}, got {type(value).__name__}",
                              zh=f"{name}：{what}应是一个数，得到的是 {type(value).__name__}")) from e
    if not math.isfinite(out):
        raise CheckFailed(say(en=f"{name}: {what} is {out}", zh=f"{name}：{what}是 {out}"))
    return out


# ---------------------------------------------------------------------------------------------
# The convnet: folding batch norm into the convolution, and the ReLU threshold of a channel


def _eval_stats(c: int, seed: int):
    g = generator(seed)
    mean = torch.randn(c, generator=g, dtype=torch.float64)
    var = torch.rand(c, generator=g, dtype=torch.float64) * 3 + 0.2
    var[0] = 1e-4                                   # a channel where eps matters
    gamma = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    gamma[1] = -gamma[1]                            # and one with a negative gamma
    beta = torch.randn(c, generator=g, dtype=torch.float64)
    return mean, var, gamma, beta


def fold_bn(fn: Callable) -> None:
    """Check ``fn(weight, running_mean, running_var, gamma, beta, eps) -> (weight, bias)``: a
    bias-free convolution followed by eval-mode batch norm, folded into one convolution."""
    name = "fold_bn"
    for seed, (c_out, c_in) in enumerate([(6, 6), (4, 3), (3, 5)]):
        g = generator(seed + 50)
        w = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64)
        mean, var, gamma, beta = _eval_stats(c_out, seed)
        x = torch.randn(2, c_in, 5, 5, generator=g, dtype=torch.float64)
        what = say(en=f"a conv with {c_in} input and {c_out} output channels",
                   zh=f"输入 {c_in} 个通道、输出 {c_out} 个通道的卷积")
        out = run(fn, w.clone(), mean.clone(), var.clone(), gamma.clone(), beta.clone(), EPS,
                  name=name, what=what)
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise CheckFailed(say(en=f"{name}: return a pair (weight, bias), got {type(out).__name__}",
                                  zh=f"{name}：请返回一对 (weight, bias)，得到的是 {type(out).__name__}"))
        scale = gamma / torch.sqrt(var + EPS)
        ref_w, ref_b = w * scale.reshape(-1, 1, 1, 1), beta - mean * scale
        new_w = _tensor(out[0], name, ref_w, say(en="the folded weight", zh="折叠后的权重"))
        new_b = _tensor(out[1], name, ref_b, say(en="the folded bias (one value per output channel)",
                                                 zh="折叠后的偏置（每个输出通道一个值）"))
        expected = torch_F.batch_norm(torch_F.conv2d(x, w, padding=1), mean, var, gamma, beta,
                                      False, 0.0, EPS)
        got = torch_F.conv2d(x, new_w, new_b, padding=1)
        if _close(got, expected):
            continue
        s_noeps = gamma / torch.sqrt(var)
        folded_w = say(en=f"the folded weight ({what})", zh=f"折叠后的权重（{what}）")
        _first_match(name, folded_w, new_w, ref_w, [
            (say(en="eps is missing: the scale is gamma / sqrt(running_var + eps)",
                 zh="缺了 eps：缩放因子是 gamma / sqrt(running_var + eps)"),
             w * s_noeps.reshape(-1, 1, 1, 1)),
            (say(en="the scale divides by the variance; divide by the standard deviation "
                    "sqrt(running_var + eps)",
                 zh="缩放因子除以的是方差；应除以标准差 sqrt(running_var + eps)"),
             w * (gamma / (var + EPS)).reshape(-1, 1, 1, 1)),
            (say(en="gamma is missing from the scale", zh="缩放因子里缺了 gamma"),
             w * (1 / torch.sqrt(var + EPS)).reshape(-1, 1, 1, 1)),
            (say(en="the scale multiplies the input channels (dim 1); batch norm scales each OUTPUT "
                    "channel, dim 0 of the weight",
                 zh="缩放乘在了输入通道（维度 1）上；批标准化缩放的是每个输出通道，即权重的维度 0"),
             w * scale.reshape(1, -1, 1, 1) if c_in == c_out else None),
        ], say(en="weight * (gamma / sqrt(running_var + eps)), one factor per output channel (dim 0)",
               zh="weight * (gamma / sqrt(running_var + eps))，每个输出通道（维度 0）一个因子"))
        wrong_bias = "bias = beta - running_mean * scale"
        folded_b = say(en=f"the folded bias ({what})", zh=f"折叠后的偏置（{what}）")
        _first_match(name, folded_b, new_b, ref_b, [
            (say(en=f"the running mean is missing: {wrong_bias}", zh=f"缺了滑动平均的均值：{wrong_bias}"),
             beta),
            (say(en=f"the sign of the mean term is wrong: {wrong_bias}",
                 zh=f"均值项的符号反了：{wrong_bias}"), beta + mean * scale),
            (say(en=f"the mean is not scaled: {wrong_bias}", zh=f"均值没有乘缩放因子：{wrong_bias}"),
             beta - mean),
        ], "bias = beta - running_mean * gamma / sqrt(running_var + eps)")
        raise CheckFailed(say(en=f"{name}: the folded convolution differs from conv then batch norm "
                                 f"({what})",
                              zh=f"{name}：折叠后的卷积与“先卷积再批标准化”的结果不同（{what}）"))
    passed(name, say(en="one convolution, the same output as conv then eval-mode BN",
                     zh="一个卷积，输出与先卷积再做评估模式的批标准化相同"))


def relu_threshold(fn: Callable) -> None:
    """Check ``fn(running_mean, running_var, gamma, beta, eps) -> t``: per channel, the input value
    at which ``relu(BN(x))`` in eval mode switches on (above ``t`` if gamma > 0, below if gamma < 0)."""
    name = "relu_threshold"
    for seed in range(3):
        mean, var, gamma, beta = _eval_stats(5, seed)
        what = say(en=f"5 channels (seed {seed})", zh=f"5 个通道（随机种子 {seed}）")
        threshold = say(en="the threshold", zh="阈值")
        got = _tensor(run(fn, mean.clone(), var.clone(), gamma.clone(), beta.clone(), EPS,
                          name=name, what=what), name, mean, threshold)
        std = torch.sqrt(var + EPS)
        ref = mean - beta * std / gamma
        _first_match(name, say(en=f"the threshold ({what})", zh=f"阈值（{what}）"), got, ref, [
            (say(en="eps is missing: the layer divides by sqrt(running_var + eps)",
                 zh="缺了 eps：这个层除以的是 sqrt(running_var + eps)"),
             mean - beta * torch.sqrt(var) / gamma),
            (say(en="it uses the variance; x_hat = (x - mean) / sqrt(var + eps), so the threshold moves "
                    "by beta * sqrt(var + eps) / gamma",
                 zh="用了方差；x_hat = (x - mean) / sqrt(var + eps)，所以阈值移动的是 "
                    "beta * sqrt(var + eps) / gamma"), mean - beta * (var + EPS) / gamma),
            (say(en="the sign is wrong: gamma * x_hat + beta = 0 at x_hat = -beta / gamma",
                 zh="符号反了：gamma * x_hat + beta = 0 出现在 x_hat = -beta / gamma 处"),
             mean + beta * std / gamma),
            (say(en="the running mean is missing: x = mean + std * x_hat",
                 zh="缺了滑动平均的均值：x = mean + std * x_hat"), -beta * std / gamma),
            (say(en="it uses |gamma|: with a negative gamma the threshold is still where gamma * x_hat + "
                    "beta = 0, at x_hat = -beta / gamma (the unit is on below it)",
                 zh="用了 |gamma|：gamma 为负时，阈值仍在 gamma * x_hat + beta = 0 处，即 "
                    "x_hat = -beta / gamma（这时单元在阈值以下才激活）"), mean - beta * std / gamma.abs()),
            (say(en="it is in normalized units (-beta / gamma); convert back to the input: "
                    "mean + sqrt(var + eps) * x_hat",
                 zh="这是标准化后的单位（-beta / gamma）；要换回输入的单位：mean + sqrt(var + eps) * x_hat"),
             -beta / gamma),
        ], say(en="solve gamma * (t - mean) / sqrt(var + eps) + beta = 0 for t",
               zh="解方程 gamma * (t - mean) / sqrt(var + eps) + beta = 0，求 t"))
        x = ref.reshape(1, -1) + torch.tensor([[-1e-3], [1e-3]], dtype=torch.float64)
        y = torch_F.batch_norm(x, mean, var, gamma, beta, False, 0.0, EPS)
        if not torch.all((y[0] > 0) != (y[1] > 0)):   # the two sides of t switch, as a check of t
            raise CheckFailed(say(en=f"{name}: relu(BN(x)) does not switch at your threshold ({what})",
                                  zh=f"{name}：relu(BN(x)) 没有在你给的阈值处切换（{what}）"))
    passed(name, say(en="relu(BN(x)) switches there, negative gamma included",
                     zh="relu(BN(x)) 正好在那里切换，gamma 为负的通道也一样"))


# ---------------------------------------------------------------------------------------------
# Weight decay: the angle between two weights


def weight_angle(fn: Callable) -> None:
    """Check ``fn(a, b) -> angle``: the angle in radians between two weight tensors of any shape,
    accurate for the tiny angles of one training step, also when the weights are float32."""
    name = "weight_angle"
    g = generator(0)
    a = torch.randn(16, 8, generator=g, dtype=torch.float64)
    turn = torch.randn(16, 8, generator=g, dtype=torch.float64)
    turn -= (turn * a).sum() / (a * a).sum() * a            # orthogonal to a
    cases = []
    for angle in (1.0, 0.3, 1e-2, 2e-4):
        b = 3.0 * (math.cos(angle) * a / a.norm() + math.sin(angle) * turn / turn.norm())
        cases.append((a, b, angle, "float64"))
    b32 = cases[-1][1].float()
    cases.append((a.float(), b32, _exact_angle(a.float(), b32), "float32"))
    for x, y, ref, dtype in cases:
        what = say(en=f"{tuple(x.shape)} {dtype} weights at {ref:.1e} rad",
                   zh=f"夹角 {ref:.1e} 弧度的 {tuple(x.shape)} {dtype} 权重")
        got = _scalar(run(fn, x.clone(), y.clone(), name=name, what=what), name,
                      say(en=f"the angle ({what})", zh=f"角度（{what}）"))
        if math.isclose(got, ref, rel_tol=1e-3, abs_tol=1e-9):
            continue
        if math.isclose(got, math.degrees(ref), rel_tol=1e-3):
            raise CheckFailed(say(en=f"{name}: the angle is in degrees; return radians ({what})",
                                  zh=f"{name}：角度用的是度；请返回弧度（{what}）"))
        if math.isclose(got, math.cos(ref), rel_tol=1e-3):
            raise CheckFailed(say(en=f"{name}: this is the cosine; return the angle, acos of it ({what})",
                                  zh=f"{name}：这是余弦；请返回角度，即它的 acos（{what}）"))
        if dtype == "float32" or ref < 1e-3 or (ref < 0.1 and math.isclose(got, ref, rel_tol=0.05)):
            raise CheckFailed(say(
                en=f"{name}: wrong for a tiny angle ({what}: got {got:.3g}): the cosine of a small angle "
                   f"is 1 - angle^2 / 2, which float32 rounds to 1 and acos then loses every digit. "
                   f"Compute in float64 (a.double()), or take atan2 of the norm of b's part orthogonal "
                   f"to a and of b's part along a",
                zh=f"{name}：对很小的角度算错了（{what}：得到 {got:.3g}）：小角度的余弦是 1 - angle^2 / 2，"
                   f"float32 会把它舍入成 1，acos 就丢掉了全部有效数字。请用 float64 计算（a.double()），"
                   f"或者对 b 垂直于 a 的分量的范数和 b 沿 a 的分量取 atan2"))
        raise CheckFailed(say(
            en=f"{name}: expected {ref:.6g} rad, got {got:.6g} ({what}); flatten both tensors, then "
               f"angle = acos(a . b / (|a| |b|))",
            zh=f"{name}：应为 {ref:.6g} 弧度，得到的是 {got:.6g}（{what}）；先把两个张量展平，然后 "
               f"angle = acos(a . b / (|a| |b|))"))
    passed(name, say(en="radians, accurate to the tiny angles of one step",
                     zh="以弧度计，对一步之内的微小角度也准确"))


def _exact_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    along = torch.dot(a, b) / a.norm()
    across = (b - torch.dot(a, b) / torch.dot(a, a) * a).norm()
    return math.atan2(across.item(), along.item())
