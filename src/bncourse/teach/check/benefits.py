"""Exercise checks of Chapter 5, the benefits: weight-scale invariance (the gradient at a scaled
weight, with and without epsilon), weight decay on batch norm's own parameters, the noise of batch
statistics, noisy batch norm, and gradient predictiveness. Every message comes in English and in
Chinese (:func:`~bncourse.teach.check.core.say`)."""

from __future__ import annotations

import itertools
import math
from numbers import Real

import torch
from torch import nn

from ...lab.benefits import bn_linear_grad, scaled_digits
from ...lab.device import generator
from .core import CheckFailed, as_tensor, call, passed, prediction, run, say

__all__ = ["batch_jitter", "decay_norm_params", "gradient_change", "grad_at_scaled_weight",
           "predict_largest_lr", "predict_speedup", "scaled_gradient"]

EPS = 1e-5


def _variant_grad(x, v, dout, *, unbiased=False, detach_stats=False, eps=EPS) -> torch.Tensor:
    """The gradient of ``sum(dout * BN(x V^T))`` in ``V`` as the typical wrong answers compute it."""
    v = v.detach().clone().requires_grad_()
    h = x @ v.T
    mean, var = h.mean(0), h.var(0, unbiased=unbiased)
    if detach_stats:
        mean, var = mean.detach(), var.detach()
    out = (h - mean) / torch.sqrt(var + eps)
    (grad,) = torch.autograd.grad((out * dout).sum(), v)
    return grad


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=1e-6, atol=1e-10 * b.abs().max().item()))


def grad_at_scaled_weight(fn) -> None:
    """Check ``fn(x, w, k, dout)``: the gradient of ``sum(dout * BN(x V^T))`` in ``V``, at ``V = k w``."""
    name = "grad_at_scaled_weight"
    cases = [(32, 6, 4, 3.0, 0), (50, 5, 7, 0.25, 1), (40, 8, 3, 1e-3, 2), (64, 4, 4, 20.0, 3)]
    for n, d_in, d_out, k, seed in cases:
        gen = generator(seed)
        x = torch.randn(n, d_in, generator=gen, dtype=torch.float64) * 2 + 1
        w = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
        dout = torch.randn(n, d_out, generator=gen, dtype=torch.float64)
        args = x.clone(), w.clone(), k, dout.clone()
        ref = bn_linear_grad(x, k * w, dout, EPS)[1]
        got = as_tensor(call(fn, *args, name=name), name, ref)
        if not torch.equal(args[1], w):
            raise CheckFailed(say(en=f"{name}: the function changed w in place; leave it as it was",
                                  zh=f"{name}：函数原地修改了 w；请保持它不变"))
        if _close(got, ref):
            continue
        at_w = bn_linear_grad(x, w, dout, EPS)[1]
        where = say(en=f"(k = {k}, x of shape {tuple(x.shape)})",
                    zh=f"（k = {k}，x 的形状为 {tuple(x.shape)}）")
        mistakes = [
            (k * ref, say(en="this is k times the right gradient: the gradient with respect to W of "
                             "L(kW) (the chain rule multiplies by k). The task asks for the gradient "
                             "with respect to the scaled weight V itself, at V = kW",
                          zh="这是正确梯度的 k 倍：它是 L(kW) 对 W 的梯度（链式法则乘上了 k）。"
                             "题目要的是对缩放后的权重 V 本身、在 V = kW 处的梯度")),
            (at_w, say(en="this is the gradient at W, not at V = kW: evaluate it with the scaled weight",
                       zh="这是在 W 处的梯度，不是在 V = kW 处的：请用缩放后的权重计算")),
            (k * at_w, say(en="this is k times the gradient at W; the gradient at kW is 1/k of it",
                           zh="这是在 W 处梯度的 k 倍；在 kW 处的梯度是它的 1/k")),
            (_variant_grad(x, k * w, dout, eps=0.0),
             say(en=f"eps is missing: normalize with sqrt(var + {EPS}), as batch norm does",
                 zh=f"漏掉了 eps：请像批标准化那样用 sqrt(var + {EPS}) 标准化")),
            (_variant_grad(x, k * w, dout, unbiased=True),
             say(en="you normalized with the unbiased variance (n - 1); batch norm uses the biased one",
                 zh="你用了无偏方差（除以 n - 1）标准化；批标准化用的是有偏方差")),
            (_variant_grad(x, k * w, dout, detach_stats=True),
             say(en="the gradient ignores that the batch mean and variance depend on V: let autograd "
                    "differentiate through them (do not detach them)",
                 zh="这个梯度忽略了批均值和批方差依赖于 V：让自动微分穿过它们求导（不要 detach）")),
        ]
        for wrong, hint in mistakes:
            if _close(got, wrong):
                raise CheckFailed(f"{name}: {hint} {where}")
        err = ((got - ref).norm() / ref.norm()).item()
        raise CheckFailed(say(en=f"{name}: wrong gradient {where}: relative error {err:.2g}",
                              zh=f"{name}：梯度不对{where}：相对误差 {err:.2g}"))
    passed(name, say(en="4 random layers, k from 0.001 to 20", zh="4 个随机层，k 从 0.001 到 20"))


def scaled_gradient(fn) -> None:
    """Check ``fn(grad_at_w, k, eps)``, a *derive* exercise: the gradient of
    ``f(V) = sum(dout * BN_eps(x V^T))`` at ``V = kW``, from calls of ``grad_at_w(e)`` (the gradient
    of the same loss at the unscaled W, computed with epsilon ``e``) only. The exact rule is
    ``grad_at_w(eps / k**2) / k``: ``BN_eps(kz) = BN_{eps/k^2}(z)``."""
    name = "scaled_gradient"
    # (examples, inputs, units, k, eps, seed); the units' variances span 1e-4 to 10, so that at
    # small k (and at k = 3 for the smallest units) eps matters
    cases = [(40, 6, 5, 1e-3, EPS, 0), (32, 5, 4, 10.0, EPS, 1), (50, 8, 6, 0.03, 1e-3, 2),
             (64, 4, 4, 3.0, 1e-2, 3)]
    for n, d_in, d_out, k, eps, seed in cases:
        gen = generator(seed)
        x = torch.randn(n, d_in, generator=gen, dtype=torch.float64) + 1
        scales = torch.logspace(-2, 0.5, d_out, dtype=torch.float64)
        w = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64) * scales[:, None] / d_in**0.5
        dout = torch.randn(n, d_out, generator=gen, dtype=torch.float64)
        asked: list[float] = []

        def grad_at_w(e, x=x, w=w, dout=dout, asked=asked):
            if isinstance(e, torch.Tensor) and e.numel() == 1:
                e = e.item()
            if isinstance(e, bool) or not isinstance(e, Real) or not e >= 0:
                raise CheckFailed(say(en=f"{name}: grad_at_w takes one epsilon, a number >= 0; got {e!r}",
                                      zh=f"{name}：grad_at_w 接受一个 epsilon，即一个 >= 0 的数；得到 {e!r}"))
            asked.append(float(e))
            return bn_linear_grad(x, w, dout, float(e))[1]

        ref = bn_linear_grad(x, k * w, dout, eps)[1]
        got = as_tensor(run(fn, grad_at_w, k, eps, name=name, what=f"k = {k}, eps = {eps}"), name, ref)
        if _close(got, ref):
            continue
        where = say(en=f"(k = {k}, eps = {eps})", zh=f"（k = {k}，eps = {eps}）")
        g = {e: bn_linear_grad(x, w, dout, e)[1] for e in (eps, eps / k**2, eps * k**2, eps / k)}
        mistakes = [
            (g[eps] / k, say(
                en="that is the rule without epsilon, grad f(kW) = grad f(W) / k: it is exact only when "
                   "eps = 0, and here k^2 var is not much larger than eps. Write BN(kz) with eps and "
                   "ask which epsilon the unscaled layer would need to give the same output",
                zh="这是不带 epsilon 的规则 grad f(kW) = grad f(W) / k：它只在 eps = 0 时精确，而这里 "
                   "k^2 var 并不远大于 eps。把带 eps 的 BN(kz) 写出来，想一想未缩放的层要用哪个 epsilon "
                   "才能给出同样的输出")),
            (g[eps / k**2], say(
                en="the epsilon is right, but the factor 1/k of the chain rule is missing: f(kV) as a "
                   "function of V has gradient k grad f(kV)",
                zh="epsilon 对了，但漏掉了链式法则的因子 1/k：f(kV) 作为 V 的函数，其梯度是 k grad f(kV)")),
            (k * g[eps / k**2], say(
                en="multiplied by k: the gradient at kW is 1/k of the gradient at W (with the right "
                   "epsilon), not k times it",
                zh="乘了 k：在 kW 处的梯度是在 W 处梯度（用对的 epsilon）的 1/k，不是 k 倍")),
            (g[eps * k**2] / k, say(
                en="the unscaled layer's epsilon is eps / k^2, not eps * k^2: divide the numerator and "
                   "the square root of (kz - k mu) / sqrt(k^2 var + eps) by k",
                zh="未缩放的层的 epsilon 是 eps / k^2，不是 eps * k^2：把 (kz - k mu) / sqrt(k^2 var + eps) "
                   "的分子和根号同除以 k")),
            (g[eps / k] / k, say(
                en="eps / k should be eps / k^2: the variance scales with k^2, not k",
                zh="eps / k 应为 eps / k^2：方差按 k^2 缩放，而不是按 k")),
        ]
        for wrong, hint in mistakes:
            if _close(got, wrong):
                raise CheckFailed(f"{name}: {hint} {where}")
        err = ((got - ref).norm() / ref.norm()).item()
        raise CheckFailed(say(en=f"{name}: wrong gradient {where}: relative error {err:.2g}",
                              zh=f"{name}：梯度不对{where}：相对误差 {err:.2g}"))
    passed(name, say(en="4 random layers, k from 0.001 to 10, eps from 1e-5 to 1e-2: exact",
                     zh="4 个随机层，k 从 0.001 到 10，eps 从 1e-5 到 1e-2：精确"))


ONE_NUMBER = {"en": "one number (a float)", "zh": "一个数（float）"}


def _number(got, name: str, kind: dict[str, str] = ONE_NUMBER, allow_none: bool = False):
    """The learner's scalar result as a Python number (``None`` kept if allowed), or a failure;
    ``kind`` says what to return, in both languages."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if got is None:
        if allow_none:
            return None
        raise CheckFailed(say(en=f"{name}: the function returned None; did you forget `return`?",
                              zh=f"{name}：函数返回了 None；是不是忘了 `return`？"))
    if isinstance(got, bool) or not isinstance(got, Real):
        raise CheckFailed(say(en=f"{name}: return {kind['en']}, got {type(got).__name__}",
                              zh=f"{name}：应返回{kind['zh']}，得到的是 {type(got).__name__}"))
    return got


def _logistic_loss(seed: int, n: int = 40, d: int = 6):
    """A smooth, non-quadratic loss of a parameter vector: logistic regression on random data."""
    gen = generator(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * 2
    y = (torch.rand(n, generator=gen, dtype=torch.float64) < 0.5).double()
    theta = torch.randn(d, generator=gen, dtype=torch.float64)

    def loss(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(x @ t, y) + 0.1 * (t**4).sum()

    return loss, theta


def _grad(loss, theta: torch.Tensor) -> torch.Tensor:
    t = theta.detach().clone().requires_grad_()
    return torch.autograd.grad(loss(t), t)[0]


def gradient_change(fn) -> None:
    """Check ``fn(loss, theta, eta)``: ``||grad L(theta - eta g) - g||`` with ``g = grad L(theta)``."""
    name = "gradient_change"
    for seed, eta in ((0, 0.1), (1, 0.5), (2, 0.02)):
        loss, theta = _logistic_loss(seed)
        g = _grad(loss, theta)
        g2 = _grad(loss, theta - eta * g)
        ref = (g2 - g).norm().item()
        theta_in = theta.clone()
        got = _number(call(fn, loss, theta_in, eta, name=name), name)
        if not torch.equal(theta_in, theta):
            raise CheckFailed(say(en=f"{name}: the function changed theta in place; leave it as it was",
                                  zh=f"{name}：函数原地修改了 theta；请保持它不变"))
        if math.isclose(got, ref, rel_tol=1e-6):
            continue
        g_up = _grad(loss, theta + eta * g)
        mistakes = [
            ((g_up - g).norm().item(),
             say(en="you stepped along +g; a gradient step goes downhill, to theta - eta * g",
                 zh="你沿 +g 走了一步；梯度下降的一步是下坡，走到 theta - eta * g")),
            (ref / g.norm().item(),
             say(en="that is the change relative to ||g||; return the change itself",
                 zh="这是相对于 ||g|| 的变化；请返回变化本身")),
            (ref / (eta * g.norm().item()),
             say(en="that is the change per unit distance (an effective beta-smoothness); return the "
                    "change itself",
                 zh="这是每单位距离的变化（有效 beta 光滑性）；请返回变化本身")),
            (g2.norm().item(),
             say(en="that is the norm of the new gradient; return the norm of its difference from "
                    "the old one",
                 zh="这是新梯度的范数；请返回新梯度与旧梯度之差的范数")),
            (ref**2, say(en="that is the squared norm; take the square root",
                         zh="这是范数的平方；请开平方根")),
            (abs(loss(theta - eta * g).item() - loss(theta).item()),
             say(en="that is the change of the loss; the task asks for the change of the gradient",
                 zh="这是损失的变化；题目要的是梯度的变化")),
        ]
        for wrong, hint in mistakes:
            if math.isclose(got, wrong, rel_tol=1e-6):
                raise CheckFailed(f"{name}: {hint} (eta = {eta})")
        raise CheckFailed(say(en=f"{name}: expected {ref:.6g}, got {got:.6g} (eta = {eta})",
                              zh=f"{name}：应为 {ref:.6g}，得到 {got:.6g}（eta = {eta}）"))
    passed(name, say(en="3 smooth losses, step sizes 0.02 to 0.5",
                     zh="3 个光滑的损失，步长 0.02 到 0.5"))


def exact_jitter(h: torch.Tensor, index: int, batch_size: int, mistake: str | None = None) -> float:
    """The std of example ``index``'s batch-normalized value over *all* batches of ``batch_size``
    (the example plus ``batch_size - 1`` others), which :func:`bncourse.lab.benefits.batch_noise`
    estimates by sampling; ``mistake`` computes it as a typical wrong answer does instead."""
    others = [j for j in range(len(h)) if j != index]
    k = batch_size - 1 if mistake in (None, "unbiased", "others only") else batch_size
    if mistake == "may miss it":
        batches = [list(c) for c in itertools.combinations(range(len(h)), batch_size)]
    elif mistake in ("others only", "batch of others"):
        batches = [list(c) for c in itertools.combinations(others, k)]
    else:
        batches = [[index, *c] for c in itertools.combinations(others, k)]
    hb = h[torch.tensor(batches)]
    mean, var = hb.mean(1), hb.var(1, unbiased=mistake == "unbiased")
    return ((h[index] - mean) / torch.sqrt(var + EPS)).std(unbiased=False).item()


def batch_jitter(fn) -> None:
    """Check ``fn(h, index, batch_size, draws)``: the std, over random batches holding example
    ``index``, of its batch-normalized value (a Monte Carlo estimate, compared with the exact one)."""
    name = "batch_jitter"
    cases = [(3, 12, 3), (3, 12, 4), (4, 12, 3), (10, 20, 3)]  # (seed, examples, batch size)
    excluded = say(en="the example's own value must enter its batch's mean and variance: a batch is "
                      "the example plus batch_size - 1 others drawn from the rest",
                   zh="样本自己的值必须参与它所在批的均值和方差：一个批由该样本加上从其余样本中抽出的 "
                      "batch_size - 1 个组成")
    hints = {  # mistake: (message, largest |log(got / its value)| that still matches it)
        "unbiased": (say(en="you normalized with the unbiased variance (n - 1); batch norm uses the "
                            "biased one",
                         zh="你用了无偏方差（除以 n - 1）标准化；批标准化用的是有偏方差"), 0.1),
        "one more": (say(en="a batch of batch_size holds the example and batch_size - 1 others, not "
                            "batch_size others",
                         zh="大小为 batch_size 的批包含该样本和另外 batch_size - 1 个样本，"
                            "而不是另外 batch_size 个"), 0.1),
        "variance": (say(en="that is the variance of the normalized value; return its standard "
                            "deviation",
                         zh="这是标准化后取值的方差；请返回它的标准差"), 0.12),
        # sampled, these are heavy-tailed: match them loosely
        "others only": (excluded, 0.3), "batch of others": (excluded, 0.3), "may miss it": (excluded, 0.3),
    }
    distance, first_miss = {m: 0.0 for m in hints}, None
    for seed, n, b in cases:
        gen = generator(seed)
        h = torch.randn(n, generator=gen, dtype=torch.float64) * 3 + 2
        index = int(torch.randint(n, (1,), generator=gen))
        ref = exact_jitter(h, index, b)
        h_in = h.clone()
        got = _number(call(fn, h_in, index, b, 8000, name=name), name)
        if not torch.equal(h_in, h):
            raise CheckFailed(say(en=f"{name}: the function changed h in place; leave it as it was",
                                  zh=f"{name}：函数原地修改了 h；请保持它不变"))
        where = say(en=f"(example {index} of {n}, batches of {b}, 8000 draws)",
                    zh=f"（{n} 个样本中的第 {index} 个，批大小 {b}，抽取 8000 次）")
        if not math.isfinite(got):
            raise CheckFailed(say(en=f"{name}: got {got}, not a finite number (a batch's variance can "
                                     f"be tiny: normalize with sqrt(var + {EPS})) {where}",
                                  zh=f"{name}：得到 {got}，不是有限的数（一个批的方差可能极小："
                                     f"请用 sqrt(var + {EPS}) 标准化）{where}"))
        if got < 0.05 * ref:
            raise CheckFailed(say(en=f"{name}: the normalized value barely varies ({got:.3g}): you seem "
                                     f"to normalize with the statistics of all N examples; use each "
                                     f"batch's own mean and variance {where}",
                                  zh=f"{name}：标准化后的值几乎不变（{got:.3g}）：你似乎用了全部 N 个样本"
                                     f"的统计量标准化；请用每个批自己的均值和方差{where}"))
        if abs(math.log(got / ref)) < 0.08:  # Monte Carlo error of 8000 draws: about 1.2%
            continue
        first_miss = first_miss or say(en=f"expected about {ref:.4g}, got {got:.4g} {where}",
                                       zh=f"应约为 {ref:.4g}，得到 {got:.4g}{where}")
        wrong = {m: exact_jitter(h, index, b, m) for m in hints if m != "variance"}
        wrong["variance"] = ref**2
        for m, v in wrong.items():  # a mistake matches if it is within its tolerance in every miss
            d = abs(math.log(got / v))
            distance[m] = max(distance[m], d / hints[m][1])
    if first_miss is None:
        passed(name, say(en="4 random units, batches of 3 and 4, all possible batches",
                         zh="4 个随机单元，批大小 3 和 4，与所有可能的批比较"))
        return
    likely = min(distance, key=distance.get)
    if distance[likely] < 1:
        raise CheckFailed(f"{name}: {hints[likely][0]}")
    raise CheckFailed(f"{name}: {first_miss}")


def _norm_layers(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of ``model`` (ours and PyTorch's): modules with running statistics and
    an affine weight."""
    return [m for m in model.modules()
            if getattr(m, "running_mean", None) is not None and getattr(m, "weight", None) is not None]


def decay_norm_params(fn, seeds=(11, 12)) -> None:
    """Check ``fn(seed) -> model``, a *diagnose* exercise: the training script of the page with strong
    weight decay, fixed so that the decay acts on the Linear weights only, not on batch norm's gamma
    and beta. Verified by behaviour, per seed: the trained model learns (test accuracy), its gammas
    keep their size, and its hidden Linear weights did shrink under the decay."""
    name = "decay_norm_params"
    data = scaled_digits()
    seen = []
    for seed in seeds:
        model = run(fn, seed, name=name, what=f"fixed_train({seed})")
        if not isinstance(model, nn.Module):
            raise CheckFailed(say(en=f"{name}: return the trained model (a torch.nn.Module), got "
                                     f"{type(model).__name__}",
                                  zh=f"{name}：请返回训练好的模型（torch.nn.Module），得到的是 "
                                     f"{type(model).__name__}"))
        norms = _norm_layers(model)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not norms or len(linears) < 2:
            raise CheckFailed(say(en=f"{name}: the model has no batch-norm layer left (or no hidden "
                                     f"Linear layer): keep the network as it is and fix the optimizer",
                                  zh=f"{name}：模型里已没有批标准化层（或没有隐藏的 Linear 层）："
                                     f"网络保持原样，修正优化器"))
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = model(data.x_test.to(device))
            acc = (out.argmax(1) == data.y_test.to(device)).double().mean().item()
        model.train(was_training)
        gamma = torch.cat([m.weight.detach().abs().flatten() for m in norms]).mean().item()
        # hidden Linear weights against PyTorch's default start, U(-1/sqrt(n), 1/sqrt(n)): its
        # expected norm is sqrt(numel / (3 n))
        kept = max((m.weight.detach().norm() / math.sqrt(m.weight.numel() / (3 * m.in_features))).item()
                   for m in linears[:-1])
        where = say(en=f"(seed {seed})", zh=f"（随机种子 {seed}）")
        if gamma < 0.3:
            raise CheckFailed(say(
                en=f"{name}: the batch-norm layers' gamma shrank to {gamma:.3g} on average: the decay "
                   f"still pulls gamma (and beta) towards 0. Batch norm makes a layer's output "
                   f"independent of the scale of the Linear weights before it, not of gamma, which "
                   f"sets that output's scale: take gamma and beta out of the decay (a parameter "
                   f"group with weight_decay=0) {where}",
                zh=f"{name}：批标准化层的 gamma 平均缩小到了 {gamma:.3g}：权重衰减仍在把 gamma（和 beta）"
                   f"拉向 0。批标准化使一层的输出与它前面 Linear 权重的尺度无关，却与 gamma 有关："
                   f"gamma 决定了输出的尺度。请把 gamma 和 beta 排除在衰减之外（放进 weight_decay=0 的"
                   f"参数组）{where}"))
        if kept > 0.5:
            raise CheckFailed(say(
                en=f"{name}: the hidden Linear weights kept {kept:.0%} of their initial norm: the weight "
                   f"decay no longer acts on them. The bug is where the decay applies, not its "
                   f"strength: keep weight_decay=WD on the Linear weights and take it off gamma and "
                   f"beta only {where}",
                zh=f"{name}：隐藏 Linear 层的权重保留了初始范数的 {kept:.0%}：权重衰减已不再作用于它们。"
                   f"问题在于衰减作用在哪些参数上，而不是它的强度：Linear 权重上保持 weight_decay=WD，"
                   f"只把 gamma 和 beta 排除在外{where}"))
        if acc < 0.5:  # chance is 0.1; fixed runs end at 0.6-0.97 (18 seeds, three offsets)
            raise CheckFailed(say(
                en=f"{name}: test accuracy {acc:.1%} after the fix, in eval mode: the gammas are fine, "
                   f"but the network still does not learn; compare your script with the buggy one "
                   f"line by line {where}",
                zh=f"{name}：修正后在评估模式下测试准确率为 {acc:.1%}：gamma 正常，但网络仍然没学好；"
                   f"请逐行对比你的脚本和有问题的脚本{where}"))
        seen.append((acc, gamma, kept))
    accs = ", ".join(f"{a:.0%}" for a, _, _ in seen)
    passed(name, say(en=f"{len(seeds)} seeds: test accuracy {accs}, gamma about "
                        f"{seen[0][1]:.2f}, hidden weights decayed to {seen[0][2]:.0%} of their start",
                     zh=f"{len(seeds)} 个随机种子：测试准确率 {accs}，gamma 约为 {seen[0][1]:.2f}，"
                        f"隐藏层权重衰减到初始的 {seen[0][2]:.0%}"))


# --------------------------------------------------------------------------- predictions
def predict_largest_lr(guess, measured: float) -> None:
    """Check the *predict* exercise of the learning-rate sweep: ``guess``, committed before the sweep,
    against the largest rate at which the batch-normalized network trained (``measured``)."""
    prediction("largest_lr_bn", guess, measured, low=0.03, high=10.0, fmt=".2g", explain=say(
        en="The plain network's limit is 0.3. A batch-normalized hidden layer's output does not "
           "depend on the scale of its weights, and a step, orthogonal to the weights, lengthens "
           "them, which lowers their effective rate eta/||W||^2 for the steps after it: the section "
           "after the sweep measures this. Batch norm has a limit too: at rate 10 no seed learns.",
        zh="无批标准化网络的上限是 0.3。批标准化的隐藏层的输出与其权重的尺度无关，而与权重正交的一步"
           "会把权重拉长，从而降低之后各步的有效学习率 eta/||W||^2：扫描之后的一节会测量这一点。"
           "批标准化也有上限：学习率为 10 时，没有一个随机种子能学会。"))


def predict_speedup(guess, measured: float) -> None:
    """Check the *predict* exercise of Figure 1: ``guess``, committed before the runs, against how
    many times sooner (mean over the seeds) the batch-normalized network reached 90% (``measured``)."""
    prediction("speedup_90", guess, measured, low=0.1, high=100.0, fmt=".2g", explain=say(
        en="At rate 2 the plain network's first steps overshoot and switch its last hidden layer "
           "off, and it climbs back out of saturation only slowly (the next section shows how); "
           "with batch norm each unit's input is centred and scaled at every step, so it cannot "
           "dive that way.",
        zh="在学习率 2 下，无批标准化网络的最初几步会冲过头，把最后一个隐藏层关掉，之后它只能慢慢"
           "走出饱和区（下一节说明其过程）；有批标准化时，每个单元的输入在每一步都被中心化和缩放，"
           "不会这样坠入饱和区。"))
