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
from .core import CheckFailed, affine_params, call, channel_data, passed, run

__all__ = [
    "batch_norm_function",
    "bn_backward_spatial",
    "fold_bn",
    "layer_norm_backward",
    "my_batch_norm",
    "norm_after_step",
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
        raise CheckFailed(f"{name}: {what} is None; did you forget `return`?")
    t = torch.as_tensor(value).detach().double().cpu()
    if t.shape != like.shape:
        raise CheckFailed(f"{name}: {what} should have shape {tuple(like.shape)}, got {tuple(t.shape)}")
    return t


def _first_match(name: str, what: str, got, ref, mistakes, hint: str, **tol) -> None:
    """Pass if ``got`` matches ``ref``; else name the first mistake it matches, or give the hint."""
    if _close(got, ref, **tol):
        return
    for message, wrong in mistakes:
        if wrong is not None and _close(got, wrong, **tol):
            raise CheckFailed(f"{name}: {what} is wrong: {message}")
    if not torch.isfinite(torch.as_tensor(got)).all():
        raise CheckFailed(f"{name}: {what} contains NaN or inf")
    raise CheckFailed(f"{name}: {what} is wrong; {hint}")


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


def _triple(out, name: str, what: str):
    if not isinstance(out, tuple | list) or len(out) != 3:
        raise CheckFailed(f"{name}: {what} should return a triple (dx, dgamma, dbeta), got "
                          f"{type(out).__name__}")
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
        ("it uses the unbiased variance (divided by m - 1); the normalization uses the biased one",
         gamma * norm(unbiased=True) + beta),
        (f"eps is missing: divide by sqrt(var + eps) (eps={eps:g} here)", gamma * norm(eps=0.0) + beta),
        ("the statistics are per example, over dim 1; batch norm takes them per feature, over the "
         "batch (dim 0)", gamma * norm(dims=(1,)) + beta),
        ("gamma and beta are not applied: return gamma * x_hat + beta", norm()),
        ("gamma and beta are swapped: gamma scales, beta shifts", beta * norm() + gamma),
    ]


def _backward_mistakes(dout, x, gamma, eps):
    dx = lambda **kw: _norm_dx(dout, x, gamma, eps, (0,), **kw)  # noqa: E731
    return [
        ("it treats mu and sigma^2 as constants; x also reaches the output through them",
         dx(paths=())),
        ("the path through sigma^2 is missing: the term -x_hat * mean(dx_hat * x_hat)",
         dx(paths=("mu",))),
        ("the path through mu is missing: the term -mean(dx_hat)", dx(paths=("var",))),
        ("it uses the unbiased variance; the forward normalizes with the biased one",
         dx(unbiased=True)),
        ("the factor gamma is missing: dL/dx_hat = gamma * dout",
         _norm_dx(dout, x, torch.ones_like(gamma), eps, (0,))),
    ]


def _param_mistakes(dout, x_hat, x):
    return {
        "dgamma": [("it sums dout alone; gamma multiplies x_hat, so dgamma = sum(dout * x_hat)",
                    dout.sum(0)),
                   ("it uses x instead of x_hat", (dout * x).sum(0)),
                   ("it is a mean over the batch; the gradient is a sum", (dout * x_hat).mean(0))],
        "dbeta": [("it is a mean over the batch; the gradient is a sum", dout.mean(0)),
                  ("it is sum(dout * x_hat), which is dgamma", (dout * x_hat).sum(0))],
    }


def batch_norm_function(fn_class) -> None:
    """Check a ``torch.autograd.Function`` with ``apply(x, gamma, beta, eps) -> out``: batch norm's
    training forward for (N, C), and a backward returning ``(dx, dgamma, dbeta, None)``."""
    name = "batch_norm_function"
    if not (isinstance(fn_class, type) and issubclass(fn_class, torch.autograd.Function)):
        raise CheckFailed(f"{name}: expected a subclass of torch.autograd.Function, got {fn_class!r}")
    for seed, shape in enumerate([(8, 4), (16, 3), (5, 6)]):
        x = channel_data(shape, seed, offset=3)
        gamma, beta = affine_params(shape[1], seed)
        dout = torch.randn(shape, generator=generator(seed + 7), dtype=torch.float64)
        what = f"an input of shape {shape}"
        leaves = [t.clone().requires_grad_(True) for t in (x, gamma, beta)]
        out = run(fn_class.apply, *leaves, EPS, name=name, what=f"forward on {what}")
        if isinstance(out, tuple | list):
            raise CheckFailed(f"{name}: forward should return the output tensor only, got a "
                              f"{type(out).__name__} of {len(out)} items")
        ref = _bn_train(x, gamma, beta)
        got = _tensor(out, name, ref, f"the output for {what}")
        _first_match(name, f"the output for {what}", got, ref, _forward_mistakes(x, gamma, beta, EPS),
                     "out = gamma * (x - mu) / sqrt(var + eps) + beta, per feature over the batch")
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            raise CheckFailed(f"{name}: the output is not connected to autograd; return it from "
                              f"forward and call the Function as BatchNormFunction.apply(...)")
        try:
            call(out.backward, dout, name=name)  # the guard of write-your-own covers backward too
        except CheckFailed:
            raise
        except RuntimeError as e:
            if "incorrect number of gradients" in str(e):
                raise CheckFailed(f"{name}: backward must return one gradient per input of forward, "
                                  f"in order: dx, dgamma, dbeta and None for eps ({e})") from e
            raise CheckFailed(f"{name}: backward raised RuntimeError: {e}") from e
        except Exception as e:
            raise CheckFailed(f"{name}: backward raised {type(e).__name__}: {e}") from e
        ref_dx, ref_dgamma, ref_dbeta = _reference_grads(_bn_train, x, gamma, beta, dout)
        for leaf, label in zip(leaves, ("dx", "dgamma", "dbeta"), strict=True):
            if leaf.grad is None:
                raise CheckFailed(f"{name}: backward returned None for {label}; return the gradient "
                                  f"of every tensor input (None only for eps)")
        dx, dgamma, dbeta = (_tensor(v.grad, name, r, lbl) for v, r, lbl in
                             zip(leaves, (x, gamma, beta), ("dx", "dgamma", "dbeta"), strict=True))
        if _close(dgamma, ref_dbeta) and _close(dbeta, ref_dgamma):
            raise CheckFailed(f"{name}: dgamma and dbeta are swapped: return dx, dgamma, dbeta in "
                              f"the order of forward's inputs x, gamma, beta")
        _first_match(name, f"dx for {what}", dx, ref_dx, _backward_mistakes(dout, x, gamma, EPS),
                     "dx = gamma / sqrt(var + eps) * (dout - mean(dout) - x_hat * mean(dout * x_hat))")
        x_hat = (x - x.mean(0)) / torch.sqrt(x.var(0, correction=0) + EPS)
        mistakes = _param_mistakes(dout, x_hat, x)
        _first_match(name, "dgamma", dgamma, ref_dgamma, mistakes["dgamma"], "dgamma = sum(dout * x_hat)")
        _first_match(name, "dbeta", dbeta, ref_dbeta, mistakes["dbeta"], "dbeta = sum(dout)")
    passed(name, "output and gradients as autograd through torch's")


STATE_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _construct(cls, name: str, *args, **kw) -> nn.Module:
    call_args = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kw.items())])
    layer = run(lambda: cls(*args, **kw), name=name, what=f"{cls.__name__}({call_args})")
    if not isinstance(layer, nn.Module):
        raise CheckFailed(f"{name}: the layer should be a torch.nn.Module, got {type(layer).__name__}")
    return layer


def _check_layout(layer: nn.Module, name: str, c: int) -> None:
    """Parameters, buffers and their initial values, as torch.nn.BatchNorm1d has them."""
    params, buffers = dict(layer.named_parameters()), dict(layer.named_buffers())
    for key in ("weight", "bias"):
        if key not in params:
            where = "a buffer" if key in buffers else "missing"
            raise CheckFailed(f"{name}: `{key}` is {where}; it must be an nn.Parameter (gamma is "
                              f"`weight`, beta is `bias`, as PyTorch names them), so it is trained")
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        if key in params:
            raise CheckFailed(f"{name}: `{key}` is an nn.Parameter, so the optimizer would train it; "
                              f"register it with self.register_buffer: saved in the state_dict, not "
                              f"trained")
        if key not in buffers:
            extra = (" PyTorch's BatchNorm counts the training batches in it (it saves it in the "
                     "state_dict and needs it for momentum=None)" if key == "num_batches_tracked" else "")
            raise CheckFailed(f"{name}: no buffer `{key}`: register it with self.register_buffer."
                              f"{extra}")
    expected = {"weight": torch.ones(c), "bias": torch.zeros(c), "running_mean": torch.zeros(c),
                "running_var": torch.ones(c)}
    state = layer.state_dict()
    for key, value in expected.items():
        got = state[key]
        if got.shape != value.shape:
            raise CheckFailed(f"{name}: `{key}` should have shape ({c},), one value per feature, got "
                              f"{tuple(got.shape)}")
        if not torch.equal(got.detach().float().cpu(), value):
            raise CheckFailed(f"{name}: `{key}` should start at {value[0].item():g} for every feature "
                              f"(as PyTorch's), got {got.tolist()}")
    count = state["num_batches_tracked"]
    if count.dtype != torch.long or count.dim() != 0 or count.item() != 0:
        raise CheckFailed(f"{name}: num_batches_tracked should be a 0-d long tensor starting at 0 "
                          f"(torch.tensor(0, dtype=torch.long)), got {count!r}")
    extra = sorted(set(state) - set(STATE_KEYS))
    if extra:
        raise CheckFailed(f"{name}: the state_dict has keys PyTorch's does not: {extra}; keep only "
                          f"{list(STATE_KEYS)} so that the two load each other's state")


def _torch_twin(layer: nn.Module, c: int, momentum) -> nn.BatchNorm1d:
    ref = nn.BatchNorm1d(c, eps=EPS, momentum=momentum).double()
    ref.load_state_dict(layer.state_dict())
    return ref


def _set_eps(layer: nn.Module, name: str) -> None:
    if not hasattr(layer, "eps"):
        raise CheckFailed(f"{name}: the layer has no attribute `eps`; store the constructor's eps "
                          f"as self.eps (as PyTorch's does)")
    layer.eps = EPS


def _compare_step(name, step, what, layer, ref, x, dout, momentum) -> None:
    """One training step of the learner's layer and torch's on the same batch."""
    old_mean, old_var = layer.running_mean.detach().clone(), layer.running_var.detach().clone()
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    out = run(layer, xs[0], name=name, what=f"the forward pass in training mode ({what})")
    expected = ref(xs[1])
    got = _tensor(out, name, expected, f"the training-mode output at step {step} ({what})")
    if not _close(got, expected):
        eval_like = torch_F.batch_norm(x, old_mean, old_var, ref.weight, ref.bias, False, 0.0, EPS)
        if _close(got, eval_like):
            raise CheckFailed(f"{name}: in training mode the layer normalizes with the running "
                              f"statistics; it must use the batch's own ({what})")
        raise CheckFailed(f"{name}: the training-mode output differs from torch.nn.BatchNorm1d's at "
                          f"step {step} ({what}); does the layer call your BatchNormFunction with "
                          f"self.weight, self.bias and self.eps?")
    run(out.backward, dout, name=name, what=f"the backward pass ({what})")
    expected.backward(dout)
    for label, mine, theirs in (("dx", xs[0].grad, xs[1].grad), ("weight.grad", layer.weight.grad,
                                ref.weight.grad), ("bias.grad", layer.bias.grad, ref.bias.grad)):
        if mine is None or not _close(mine, theirs):
            raise CheckFailed(f"{name}: {label} differs from torch.nn.BatchNorm1d's at step {step} "
                              f"({what}); check the backward of your BatchNormFunction")
    _compare_running(name, step, what, layer, ref, x, old_mean, old_var, momentum)


def _compare_running(name, step, what, layer, ref, x, old_mean, old_var, momentum) -> None:
    count = layer.num_batches_tracked
    if int(count) != int(ref.num_batches_tracked):
        raise CheckFailed(f"{name}: num_batches_tracked is {int(count)} after {step} training "
                          f"batches; add 1 for every batch in training mode")
    k = 1.0 / step if momentum is None else momentum
    mu, var_b, var_u = x.mean(0), x.var(0, correction=0), x.var(0)
    new_mean, new_var = layer.running_mean.detach(), layer.running_var.detach()
    if _close(new_mean, ref.running_mean) and _close(new_var, ref.running_var):
        return
    def blend(old, new, w):
        return (1 - w) * old + w * new

    mistakes = [
        ((old_mean, old_var), "the running statistics were not updated in training mode"),
        ((mu, var_u), "the running statistics were replaced by the batch's; blend them: "
                      "(1 - momentum) * running + momentum * batch"),
        ((blend(old_mean, mu, 1 - k), blend(old_var, var_u, 1 - k)),
         "momentum is reversed: PyTorch's momentum weighs the NEW batch, "
         "running = (1 - momentum) * running + momentum * batch (Keras and CS231n weigh the old value)"),
        ((blend(old_mean, mu, k), blend(old_var, var_b, k)),
         "running_var got the biased batch variance; PyTorch stores the unbiased one, "
         "x.var(0, unbiased=True), while it normalizes with the biased one"),
        ((blend(old_mean, mu, k), blend(old_var, var_b.sqrt(), k)),
         "running_var got the standard deviation; it stores the (unbiased) variance"),
    ]
    if momentum is None:
        mistakes += [
            ((blend(old_mean, mu, 0.1), blend(old_var, var_u, 0.1)),
             "with momentum=None PyTorch keeps a cumulative average: weight 1 / num_batches_tracked "
             "for the new batch, not a fixed 0.1"),
            ((blend(old_mean, mu, 1 / (step + 1)), blend(old_var, var_u, 1 / (step + 1))),
             "with momentum=None the weight of the new batch is 1 / num_batches_tracked, counted "
             "after this batch was added (1 for the first batch)"),
        ]
    for (wrong_mean, wrong_var), message in mistakes:
        if _close(new_mean, wrong_mean) and _close(new_var, wrong_var):
            raise CheckFailed(f"{name}: {message} (step {step}, {what})")
    part = "running_mean" if not _close(new_mean, ref.running_mean) else "running_var"
    raise CheckFailed(f"{name}: {part} differs from torch.nn.BatchNorm1d's after step {step} ({what})")


def _compare_eval(name, what, layer, ref, x) -> None:
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.eval()
    ref.eval()
    with torch.no_grad():
        got = run(layer, x.clone(), name=name, what=f"the forward pass in eval mode ({what})")
        expected = ref(x)
    got = _tensor(got, name, expected, f"the eval-mode output ({what})")
    w, b, rm, rv = (before[k] for k in ("weight", "bias", "running_mean", "running_var"))
    mistakes = [
        ("eval mode normalizes with the batch's statistics, as in training; it must use "
         "running_mean and running_var, so each output depends on its own input only",
         torch_F.batch_norm(x, None, None, w, b, True, 0.0, EPS)),
        ("eps is missing in eval mode: divide by sqrt(running_var + eps)", w * (x - rm) / rv.sqrt() + b),
        ("eval mode divides by running_var; divide by sqrt(running_var + eps)",
         w * (x - rm) / (rv + EPS) + b),
        ("eval mode does not apply weight and bias", (x - rm) / (rv + EPS).sqrt()),
    ]
    _first_match(name, f"the eval-mode output ({what})", got, expected, mistakes,
                 "eval mode: weight * (x - running_mean) / sqrt(running_var + eps) + bias")
    moved = [k for k, v in layer.state_dict().items() if not torch.equal(v, before[k])]
    if moved:
        raise CheckFailed(f"{name}: an eval-mode forward pass changed {moved}; in eval mode the "
                          f"buffers are read, never updated ({what})")


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
        raise CheckFailed(f"{name}: your layer cannot load torch.nn.BatchNorm1d's state_dict: {e}") from e
    if int(layer.num_batches_tracked) != 7:
        raise CheckFailed(f"{name}: after loading PyTorch's state_dict num_batches_tracked is "
                          f"{int(layer.num_batches_tracked)}, not 7")
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    _compare_eval(name, "after loading PyTorch's state_dict", layer, ref, x)
    back = nn.BatchNorm1d(4, eps=EPS).double()
    back.load_state_dict(layer.state_dict())
    if not all(torch.equal(back.state_dict()[k], ref.state_dict()[k]) for k in STATE_KEYS):
        raise CheckFailed(f"{name}: PyTorch's layer loaded from your state_dict differs from the original")


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
            raise CheckFailed(f"{name}: a network trained with your layer drifts from the same network "
                              f"with torch.nn.BatchNorm1d at step {step} (loss {losses[0]:.6f} vs "
                              f"{losses[1]:.6f})")
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        if not _close(ours(x), theirs(x)):
            raise CheckFailed(f"{name}: after {steps} training steps the two networks disagree in "
                              f"eval mode: compare the running statistics")


def my_batch_norm(cls) -> None:
    """Check a layer class ``cls(num_features, eps=1e-5, momentum=0.1)`` against ``torch.nn.BatchNorm1d``
    for (N, C) inputs: parameters and buffers, training steps (output, gradients, running statistics,
    ``momentum=None``), eval mode, ``state_dict`` both ways, and a small network trained with it."""
    name = "my_batch_norm"
    if not isinstance(cls, type):
        raise CheckFailed(f"{name}: expected a class (an nn.Module subclass), got {cls!r}")
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
            _compare_step(name, step, f"{what}, batch of {m}", layer, ref, x, dout, momentum)
        _compare_eval(name, what, layer, ref, channel_data((7, 5), 99, offset=3))
    _load_both_ways(cls, name)
    _train_together(cls, name)
    passed(name, "as torch.nn.BatchNorm1d, step by step and in a network")


# ---------------------------------------------------------------------------------------------
# Backward passes for images and for layer norm


def bn_backward_spatial(fn: Callable) -> None:
    """Check ``fn(dout, x, gamma, eps) -> (dx, dgamma, dbeta)`` for an (N, C, H, W) input."""
    name = "bn_backward_spatial"
    for seed, shape in enumerate([(4, 3, 5, 5), (2, 4, 3, 6), (6, 2, 2, 3)]):
        x = channel_data(shape, seed, offset=3)
        gamma, beta = affine_params(shape[1], seed)
        dout = torch.randn(shape, generator=generator(seed + 7), dtype=torch.float64)
        what = f"an input of shape {shape}"
        out = _triple(run(fn, dout.clone(), x.clone(), gamma.clone(), EPS, name=name, what=what),
                      name, "the function")
        ref_dx, ref_dgamma, ref_dbeta = _reference_grads(_bn_train, x, gamma, beta, dout)
        for value, label in zip(out[1:], ("dgamma", "dbeta"), strict=True):
            t = torch.as_tensor(value) if value is not None else None
            if t is not None and t.shape in ((shape[1], shape[2], shape[3]), (shape[0], shape[1])):
                raise CheckFailed(f"{name}: {label} has shape {tuple(t.shape)}; gamma and beta have "
                                  f"one value per channel, so sum over N, H and W: shape ({shape[1]},)")
        dx, dgamma, dbeta = (_tensor(v, name, r, lbl) for v, r, lbl in
                             zip(out, (x, gamma, beta), ("dx", "dgamma", "dbeta"), strict=True))
        dx_of = partial(_norm_dx, dout, x, gamma.reshape(1, -1, 1, 1), EPS)
        nhw = (0, 2, 3)
        _first_match(name, f"dx for {what}", dx, ref_dx, [
            ("the sums run over N only, one mean per position: batch norm for images takes one mean "
             "and variance per channel, so sum over (N, H, W)", dx_of((0,))),
            ("the sums run over (H, W) for each example (that is instance norm): sum over (N, H, W)",
             dx_of((2, 3))),
            ("the sums run over (N, H, W) but are divided by N: there are m = N * H * W values per "
             "channel", dx_of(nhw, count=shape[0])),
            ("the path through mu is missing: the term -mean(dx_hat) over (N, H, W)",
             dx_of(nhw, paths=("var",))),
            ("the path through sigma^2 is missing: the term -x_hat * mean(dx_hat * x_hat)",
             dx_of(nhw, paths=("mu",))),
            ("it treats mu and sigma^2 as constants", dx_of(nhw, paths=())),
            ("it uses the unbiased variance; the forward normalizes with the biased one",
             dx_of(nhw, unbiased=True)),
        ], "the 2D formula holds with every mean taken over (N, H, W), m = N * H * W")
        x_hat = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(x.var((0, 2, 3), keepdim=True,
                                                                           correction=0) + EPS)
        _first_match(name, "dgamma", dgamma, ref_dgamma, [
            ("it sums dout alone; dgamma = sum(dout * x_hat)", dout.sum((0, 2, 3))),
            ("it is a mean; the gradient is a sum over (N, H, W)", (dout * x_hat).mean((0, 2, 3))),
        ], "dgamma = sum over (N, H, W) of dout * x_hat")
        _first_match(name, "dbeta", dbeta, ref_dbeta, [
            ("it is a mean; the gradient is a sum over (N, H, W)", dout.mean((0, 2, 3))),
        ], "dbeta = sum over (N, H, W) of dout")
    passed(name, "sums over (N, H, W), m = N * H * W, as autograd")


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
        what = f"an input of shape {shape}"
        out = _triple(run(fn, dout.clone(), x.clone(), gamma.clone(), EPS, name=name, what=what),
                      name, "the function")
        ref_dx, ref_dgamma, ref_dbeta = _reference_grads(_layer_norm, x, gamma, beta, dout)
        for value, label in zip(out[1:], ("dgamma", "dbeta"), strict=True):
            t = torch.as_tensor(value) if value is not None else None
            if t is not None and t.shape == (shape[0],):
                raise CheckFailed(f"{name}: {label} has shape {tuple(t.shape)}, one value per example; "
                                  f"gamma and beta have one value per feature, so sum over the batch "
                                  f"(dim 0): shape ({shape[1]},)")
        dx, dgamma, dbeta = (_tensor(v, name, r, lbl) for v, r, lbl in
                             zip(out, (x, gamma, beta), ("dx", "dgamma", "dbeta"), strict=True))
        dx_of = partial(_norm_dx, dout, x, gamma, EPS)
        _first_match(name, f"dx for {what}", dx, ref_dx, [
            ("the means run over the batch (dim 0): that is batch norm's backward; layer norm "
             "normalizes each example over its features, so the means run over dim 1", dx_of((0,))),
            ("the path through mu is missing: the term -mean(dx_hat) over the features",
             dx_of((1,), paths=("var",))),
            ("the path through sigma^2 is missing: the term -x_hat * mean(dx_hat * x_hat) over the "
             "features", dx_of((1,), paths=("mu",))),
            ("it treats mu and sigma^2 as constants", dx_of((1,), paths=())),
            ("it uses the unbiased variance; layer norm normalizes with the biased one",
             dx_of((1,), unbiased=True)),
            ("the factor gamma is missing: dL/dx_hat = gamma * dout",
             _norm_dx(dout, x, torch.ones_like(gamma), EPS, (1,))),
        ], "dx = inv_std * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)), means over dim 1, "
           "dx_hat = gamma * dout")
        x_hat = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True, correction=0) + EPS)
        _first_match(name, "dgamma", dgamma, ref_dgamma, [
            ("it sums dout alone; dgamma = sum over the batch of dout * x_hat", dout.sum(0)),
            ("it uses batch norm's x_hat (statistics over the batch); layer norm's x_hat is "
             "normalized per example", (dout * _normalized(x, 0)).sum(0)),
            ("it is a mean; the gradient is a sum over the batch", (dout * x_hat).mean(0)),
        ], "dgamma = sum over the batch (dim 0) of dout * x_hat")
        _first_match(name, "dbeta", dbeta, ref_dbeta, [
            ("it is a mean; the gradient is a sum over the batch", dout.mean(0)),
        ], "dbeta = sum over the batch (dim 0) of dout")
    passed(name, "means over the features, as autograd")


def _normalized(x, dim):
    return (x - x.mean(dim, keepdim=True)) / torch.sqrt(x.var(dim, keepdim=True, correction=0) + EPS)


# ---------------------------------------------------------------------------------------------
# Weight decay on scale-invariant weights


def _scalar(value, name: str, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as e:
        raise CheckFailed(f"{name}: expected a number for {what}, got {type(value).__name__}") from e
    if not math.isfinite(out):
        raise CheckFailed(f"{name}: {what} is {out}")
    return out


def norm_after_step(fn: Callable) -> None:
    """Check ``fn(w_norm, g_norm, lr, weight_decay) -> new_norm``: the norm of a scale-invariant
    weight after one SGD step with L2 weight decay, its gradient orthogonal to it."""
    name = "norm_after_step"
    cases = [(5.0, 2.0, 0.1, 0.01), (1.0, 3.0, 0.5, 0.0), (2.0, 0.5, 0.2, 0.05), (10.0, 40.0, 0.1, 0.1)]
    for w, g, lr, wd in cases:
        what = f"|w| = {w}, |grad| = {g}, lr = {lr}, weight_decay = {wd}"
        got = _scalar(run(fn, w, g, lr, wd, name=name, what=what), name, f"the new norm ({what})")
        ref = math.hypot((1 - lr * wd) * w, lr * g)
        if math.isclose(got, ref, rel_tol=1e-9):
            continue
        mistakes = [
            ((1 - lr * wd) * w, "the gradient step is missing: it is orthogonal to w, so it adds "
                                "(lr * |grad|)^2 to the squared norm"),
            (math.hypot(w, lr * g), "the decay is missing: the L2 term adds lr * weight_decay * w to "
                                    "the step, which shrinks w by the factor (1 - lr * weight_decay)"),
            ((1 - lr * wd) * w + lr * g, "the norms were added; the two parts are orthogonal, so "
                                         "their squares add (Pythagoras)"),
            (math.hypot((1 - wd) * w, lr * g), "the decay factor is (1 - lr * weight_decay): the "
                                               "learning rate multiplies the L2 gradient too"),
            (math.hypot((1 - 2 * lr * wd) * w, lr * g),
             "the L2 penalty (weight_decay / 2) * |w|^2 has gradient weight_decay * w, as PyTorch's "
             "weight_decay uses it: the factor is (1 - lr * weight_decay)"),
            ((1 - lr * wd) ** 2 * w**2 + (lr * g) ** 2, "this is the squared norm; take the square root"),
        ]
        for wrong, message in mistakes:
            if math.isclose(got, wrong, rel_tol=1e-9):
                raise CheckFailed(f"{name}: {message} ({what})")
        raise CheckFailed(f"{name}: expected {ref:.6g}, got {got:.6g} ({what}); the new weight is "
                          f"(1 - lr * wd) * w - lr * grad, with grad orthogonal to w")
    passed(name, "shrink, then add the orthogonal step by Pythagoras")


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
        what = f"a conv with {c_in} input and {c_out} output channels"
        out = run(fn, w.clone(), mean.clone(), var.clone(), gamma.clone(), beta.clone(), EPS,
                   name=name, what=what)
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise CheckFailed(f"{name}: return a pair (weight, bias), got {type(out).__name__}")
        scale = gamma / torch.sqrt(var + EPS)
        ref_w, ref_b = w * scale.reshape(-1, 1, 1, 1), beta - mean * scale
        new_w = _tensor(out[0], name, ref_w, "the folded weight")
        new_b = _tensor(out[1], name, ref_b, "the folded bias (one value per output channel)")
        expected = torch_F.batch_norm(torch_F.conv2d(x, w, padding=1), mean, var, gamma, beta,
                                      False, 0.0, EPS)
        got = torch_F.conv2d(x, new_w, new_b, padding=1)
        if _close(got, expected):
            continue
        s_noeps = gamma / torch.sqrt(var)
        _first_match(name, f"the folded weight ({what})", new_w, ref_w, [
            ("eps is missing: the scale is gamma / sqrt(running_var + eps)",
             w * s_noeps.reshape(-1, 1, 1, 1)),
            ("the scale divides by the variance; divide by the standard deviation sqrt(running_var + eps)",
             w * (gamma / (var + EPS)).reshape(-1, 1, 1, 1)),
            ("gamma is missing from the scale", w * (1 / torch.sqrt(var + EPS)).reshape(-1, 1, 1, 1)),
            ("the scale multiplies the input channels (dim 1); batch norm scales each OUTPUT channel, "
             "dim 0 of the weight", w * scale.reshape(1, -1, 1, 1) if c_in == c_out else None),
        ], "weight * (gamma / sqrt(running_var + eps)), one factor per output channel (dim 0)")
        _first_match(name, f"the folded bias ({what})", new_b, ref_b, [
            ("the running mean is missing: bias = beta - running_mean * scale", beta),
            ("the sign of the mean term is wrong: bias = beta - running_mean * scale", beta + mean * scale),
            ("the mean is not scaled: bias = beta - running_mean * scale", beta - mean),
        ], "bias = beta - running_mean * gamma / sqrt(running_var + eps)")
        raise CheckFailed(f"{name}: the folded convolution differs from conv then batch norm ({what})")
    passed(name, "one convolution, the same output as conv then eval-mode BN")


def relu_threshold(fn: Callable) -> None:
    """Check ``fn(running_mean, running_var, gamma, beta, eps) -> t``: per channel, the input value
    at which ``relu(BN(x))`` in eval mode switches on (above ``t`` if gamma > 0, below if gamma < 0)."""
    name = "relu_threshold"
    for seed in range(3):
        mean, var, gamma, beta = _eval_stats(5, seed)
        what = f"5 channels (seed {seed})"
        got = _tensor(run(fn, mean.clone(), var.clone(), gamma.clone(), beta.clone(), EPS,
                           name=name, what=what), name, mean, "the threshold")
        std = torch.sqrt(var + EPS)
        ref = mean - beta * std / gamma
        _first_match(name, f"the threshold ({what})", got, ref, [
            ("eps is missing: the layer divides by sqrt(running_var + eps)",
             mean - beta * torch.sqrt(var) / gamma),
            ("it uses the variance; x_hat = (x - mean) / sqrt(var + eps), so the threshold moves by "
             "beta * sqrt(var + eps) / gamma", mean - beta * (var + EPS) / gamma),
            ("the sign is wrong: gamma * x_hat + beta = 0 at x_hat = -beta / gamma",
             mean + beta * std / gamma),
            ("the running mean is missing: x = mean + std * x_hat", -beta * std / gamma),
            ("it uses |gamma|: with a negative gamma the threshold is still where gamma * x_hat + beta "
             "= 0, at x_hat = -beta / gamma (the unit is on below it)", mean - beta * std / gamma.abs()),
            ("it is in normalized units (-beta / gamma); convert back to the input: "
             "mean + sqrt(var + eps) * x_hat", -beta / gamma),
        ], "solve gamma * (t - mean) / sqrt(var + eps) + beta = 0 for t")
        x = ref.reshape(1, -1) + torch.tensor([[-1e-3], [1e-3]], dtype=torch.float64)
        y = torch_F.batch_norm(x, mean, var, gamma, beta, False, 0.0, EPS)
        if not torch.all((y[0] > 0) != (y[1] > 0)):   # the two sides of t switch, as a check of t
            raise CheckFailed(f"{name}: relu(BN(x)) does not switch at your threshold ({what})")
    passed(name, "relu(BN(x)) switches there, negative gamma included")


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
        what = f"{tuple(x.shape)} {dtype} weights at {ref:.1e} rad"
        got = _scalar(run(fn, x.clone(), y.clone(), name=name, what=what), name, f"the angle ({what})")
        if math.isclose(got, ref, rel_tol=1e-3, abs_tol=1e-9):
            continue
        if math.isclose(got, math.degrees(ref), rel_tol=1e-3):
            raise CheckFailed(f"{name}: the angle is in degrees; return radians ({what})")
        if math.isclose(got, math.cos(ref), rel_tol=1e-3):
            raise CheckFailed(f"{name}: this is the cosine; return the angle, acos of it ({what})")
        if dtype == "float32" or ref < 1e-3 or (ref < 0.1 and math.isclose(got, ref, rel_tol=0.05)):
            raise CheckFailed(
                f"{name}: wrong for a tiny angle ({what}: got {got:.3g}): the cosine of a small angle "
                f"is 1 - angle^2 / 2, which float32 rounds to 1 and acos then loses every digit. "
                f"Compute in float64 (a.double()), or take atan2 of the norm of b's part orthogonal "
                f"to a and of b's part along a")
        raise CheckFailed(f"{name}: expected {ref:.6g} rad, got {got:.6g} ({what}); flatten both "
                          f"tensors, then angle = acos(a . b / (|a| |b|))")
    passed(name, "radians, accurate to the tiny angles of one step")


def _exact_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    along = torch.dot(a, b) / a.norm()
    across = (b - torch.dot(a, b) / torch.dot(a, a) * a).norm()
    return math.atan2(across.item(), along.item())
