"""Exercise checks of Chapter 5, the benefits: weight-scale invariance, reading training runs, the
noise of batch statistics, noisy batch norm, and gradient predictiveness."""

from __future__ import annotations

import itertools
import math
from numbers import Real

import torch

from ...functional import batch_norm
from ...lab.benefits import Sweep, bn_linear_grad
from ...lab.device import generator
from .core import CheckFailed, as_tensor, call, passed

__all__ = ["batch_jitter", "gradient_change", "grad_at_scaled_weight", "largest_trainable_lr",
           "noisy_batch_norm", "steps_fraction"]

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
            raise CheckFailed(f"{name}: the function changed w in place; leave it as it was")
        if _close(got, ref):
            continue
        at_w = bn_linear_grad(x, w, dout, EPS)[1]
        where = f"(k = {k}, x of shape {tuple(x.shape)})"
        mistakes = [
            (k * ref, "this is k times the right gradient: the gradient with respect to W of "
                      "L(kW) (the chain rule multiplies by k). The task asks for the gradient "
                      "with respect to the scaled weight V itself, at V = kW"),
            (at_w, "this is the gradient at W, not at V = kW: evaluate it with the scaled weight"),
            (k * at_w, "this is k times the gradient at W; the gradient at kW is 1/k of it"),
            (_variant_grad(x, k * w, dout, eps=0.0),
             f"eps is missing: normalize with sqrt(var + {EPS}), as batch norm does"),
            (_variant_grad(x, k * w, dout, unbiased=True),
             "you normalized with the unbiased variance (n - 1); batch norm uses the biased one"),
            (_variant_grad(x, k * w, dout, detach_stats=True),
             "the gradient ignores that the batch mean and variance depend on V: let autograd "
             "differentiate through them (do not detach them)"),
        ]
        for wrong, hint in mistakes:
            if _close(got, wrong):
                raise CheckFailed(f"{name}: {hint} {where}")
        err = ((got - ref).norm() / ref.norm()).item()
        raise CheckFailed(f"{name}: wrong gradient {where}: relative error {err:.2g}")
    passed(name, "4 random layers, k from 0.001 to 20")


def _number(got, name: str, kind: str, allow_none: bool = False):
    """The learner's scalar result as a Python number (``None`` kept if allowed), or a failure."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if got is None:
        if allow_none:
            return None
        raise CheckFailed(f"{name}: the function returned None; did you forget `return`?")
    if isinstance(got, bool) or not isinstance(got, Real):
        raise CheckFailed(f"{name}: return {kind}, got {type(got).__name__}")
    return got


def _matches_optional(got, ref, name: str, why_none: str) -> bool:
    """True when ``got`` is the reference (``None`` included); a failure when only None is right."""
    if ref is None:
        if got is not None:
            raise CheckFailed(f"{name}: {why_none}, so return None; got {got!r}")
        return True
    return got is not None and math.isclose(got, ref)


def _sweep(lrs: list[float], acc: list[list[float]]) -> Sweep:
    t = torch.tensor(acc, dtype=torch.float64)
    return Sweep(lrs, list(range(t.shape[1])), t, torch.zeros_like(t),
                 torch.zeros(t.shape, dtype=torch.bool))


def largest_trainable_lr(fn) -> None:
    """Check ``fn(lrs, acc, threshold)``: the largest rate at which every seed reaches ``threshold``."""
    name = "largest_trainable_lr"
    nan = math.nan
    cases = [  # (lrs, accuracies per lr and seed, threshold)
        ([0.01, 0.1, 1.0, 10.0], [[0.5, 0.6, 0.55], [0.93, 0.95, 0.94], [0.96, 0.4, 0.97],
                                  [0.1, 0.1, 0.1]], 0.9),
        ([3.0, 0.3, 30.0, 1.0], [[0.95, 0.96], [0.92, 0.91], [0.1, nan], [0.97, 0.9]], 0.9),
        ([0.1, 0.2, 0.4], [[0.99, 0.98], [0.97, 0.99], [0.96, 0.95]], 0.95),
        ([0.1, 1.0], [[0.3, 0.2], [nan, 0.1]], 0.9),
        ([0.05, 0.5, 5.0], [[0.8, 0.8, 0.8], [0.9, 0.91, 0.93], [0.95, 0.2, 0.99]], 0.8),
        ([0.1, 1.0, 3.0], [[0.9, 0.92], [0.95, 0.88], [0.5, 0.4]], 0.9),
    ]
    for lrs, acc, threshold in cases:
        sweep = _sweep(lrs, acc)
        ref = sweep.largest_trainable(threshold)
        got = _number(call(fn, list(lrs), torch.tensor(acc, dtype=torch.float64), threshold, name=name),
                      name, "a learning rate (a float)", allow_none=True)
        where = f"(lrs {lrs}, threshold {threshold})"
        if _matches_optional(got, ref, name, f"no rate trains every seed here {where}"):
            continue
        t = torch.tensor(acc, dtype=torch.float64)
        mean_ok = [lr for lr, a in zip(lrs, t.nanmean(1).tolist(), strict=True) if a >= threshold]
        any_ok = [lr for lr, a in zip(lrs, (t >= threshold).any(1).tolist(), strict=True) if a]
        strict = sweep.largest_trainable(threshold + 1e-9)
        ordered = [lr for lr, ok in zip(lrs, sweep.trains(threshold).tolist(), strict=True) if ok]
        if isinstance(got, int) and got == lrs.index(ref):
            hint = "you returned the index of the rate; return the rate itself"
        elif got == strict:
            hint = "a run that reaches exactly the threshold counts: compare with >="
        elif got is None:
            hint = f"returned None, but {ref} trains every seed"
        elif mean_ok and got == max(mean_ok):
            hint = ("a rate trains only if every seed reaches the threshold; you seem to have "
                    "averaged over the seeds, which lets a failing seed hide behind good ones")
        elif any_ok and got == max(any_ok):
            hint = "a rate trains only if every seed reaches the threshold, not just one of them"
        elif got == min(ordered):
            hint = "that is the smallest rate that trains; the task asks for the largest"
        elif got == ordered[-1]:
            hint = "the rates are not sorted: take the largest trainable one, not the last listed"
        else:
            hint = f"expected {ref}, got {got}"
        raise CheckFailed(f"{name}: {hint} {where}")
    passed(name, "6 sweeps: unsorted, with NaN, none trainable")


def _first(acc: list[float], target: float, strict: bool = False) -> int | None:
    return next((i for i, a in enumerate(acc) if (a > target if strict else a >= target)), None)


def steps_fraction(fn) -> None:
    """Check ``fn(eval_step, plain_acc, bn_acc)``: the fraction of the plain run's steps the BN run
    needs to reach the plain run's final test accuracy (None if it never does)."""
    name = "steps_fraction"
    uniform = [0, 50, 100, 150, 200, 250, 300, 350, 400]
    cases = [  # (evaluated steps, plain test accuracies, normed test accuracies)
        (uniform, [0.1, 0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.92, 0.93],
         [0.1, 0.8, 0.9, 0.93, 0.95, 0.96, 0.97, 0.97, 0.98]),
        ([0, 25, 50, 100, 150, 200, 300, 400, 500], [0.1, 0.6, 0.9, 0.95, 0.9, 0.88, 0.87, 0.86, 0.85],
         [0.1, 0.5, 0.8, 0.84, 0.85, 0.9, 0.96, 0.97, 0.97]),
        (uniform, [0.1, 0.2, 0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99],
         [0.1, 0.3, 0.6, 0.7, 0.8, 0.9, 0.95, 0.96, 0.97]),
    ]
    for i, (steps, plain_acc, normed_acc) in enumerate(cases):
        first = _first(normed_acc, plain_acc[-1])
        reached = None if first is None else steps[first]
        ref = None if reached is None else reached / steps[-1]
        # as lists, and once as rows of a Runs table (tensors)
        args = ((list(steps), list(plain_acc), list(normed_acc)) if i != 1 else
                (list(steps), torch.tensor(plain_acc, dtype=torch.float64),
                 torch.tensor(normed_acc, dtype=torch.float64)))
        got = _number(call(fn, *args, name=name), name, "a fraction (a float)", allow_none=True)
        why = f"here the BN run never reaches the plain run's final accuracy {plain_acc[-1]}"
        if _matches_optional(got, ref, name, why):
            continue
        i_max = _first(normed_acc, max(plain_acc))
        i_strict = _first(normed_acc, plain_acc[-1], strict=True)
        i_ref = steps.index(reached)
        if got is None:
            hint = f"returned None, but the BN run reaches {plain_acc[-1]} at step {reached}"
        elif math.isclose(got, reached):
            hint = "you returned the number of steps; divide by the plain run's last step"
        elif math.isclose(got, i_ref / (len(steps) - 1)) or math.isclose(got, i_ref / len(steps)):
            hint = ("you divided evaluation indices; use the steps themselves (eval_step), which "
                    "need not be 1 apart")
        elif i_max is not None and math.isclose(got, steps[i_max] / steps[-1]):
            hint = ("the target is the plain run's final accuracy, plain_acc[-1], not its best "
                    "one")
        elif i_strict is not None and math.isclose(got, steps[i_strict] / steps[-1]):
            hint = "reaching the target exactly counts: compare with >="
        elif math.isclose(got, 1 - ref):
            hint = "that is the fraction of steps saved; return the fraction needed"
        else:
            hint = f"expected {ref:.3g}, got {got!r}"
        raise CheckFailed(f"{name}: {hint} (plain accuracies {plain_acc})")
    passed(name, "3 pairs of runs, including one that never gets there")


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
        got = _number(call(fn, loss, theta_in, eta, name=name), name, "one number (a float)")
        if not torch.equal(theta_in, theta):
            raise CheckFailed(f"{name}: the function changed theta in place; leave it as it was")
        if math.isclose(got, ref, rel_tol=1e-6):
            continue
        g_up = _grad(loss, theta + eta * g)
        mistakes = [
            ((g_up - g).norm().item(), "you stepped along +g; a gradient step goes downhill, to "
                                       "theta - eta * g"),
            (ref / g.norm().item(), "that is the change relative to ||g||; return the change itself"),
            (ref / (eta * g.norm().item()), "that is the change per unit distance (an effective "
                                            "beta-smoothness); return the change itself"),
            (g2.norm().item(), "that is the norm of the new gradient; return the norm of its "
                               "difference from the old one"),
            (ref**2, "that is the squared norm; take the square root"),
            (abs(loss(theta - eta * g).item() - loss(theta).item()),
             "that is the change of the loss; the task asks for the change of the gradient"),
        ]
        for wrong, hint in mistakes:
            if math.isclose(got, wrong, rel_tol=1e-6):
                raise CheckFailed(f"{name}: {hint} (eta = {eta})")
        raise CheckFailed(f"{name}: expected {ref:.6g}, got {got:.6g} (eta = {eta})")
    passed(name, "3 smooth losses, step sizes 0.02 to 0.5")


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
    excluded = ("the example's own value must enter its batch's mean and variance: a batch is the "
                "example plus batch_size - 1 others drawn from the rest")
    hints = {  # mistake: (message, largest |log(got / its value)| that still matches it)
        "unbiased": ("you normalized with the unbiased variance (n - 1); batch norm uses the biased "
                     "one", 0.1),
        "one more": ("a batch of batch_size holds the example and batch_size - 1 others, not "
                     "batch_size others", 0.1),
        "variance": ("that is the variance of the normalized value; return its standard deviation", 0.12),
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
        got = _number(call(fn, h_in, index, b, 8000, name=name), name, "one number (a float)")
        if not torch.equal(h_in, h):
            raise CheckFailed(f"{name}: the function changed h in place; leave it as it was")
        where = f"(example {index} of {n}, batches of {b}, 8000 draws)"
        if not math.isfinite(got):
            raise CheckFailed(f"{name}: got {got}, not a finite number (a batch's variance can be "
                              f"tiny: normalize with sqrt(var + {EPS})) {where}")
        if got < 0.05 * ref:
            raise CheckFailed(f"{name}: the normalized value barely varies ({got:.3g}): you seem to "
                              f"normalize with the statistics of all N examples; use each batch's "
                              f"own mean and variance {where}")
        if abs(math.log(got / ref)) < 0.08:  # Monte Carlo error of 8000 draws: about 1.2%
            continue
        first_miss = first_miss or f"expected about {ref:.4g}, got {got:.4g} {where}"
        wrong = {m: exact_jitter(h, index, b, m) for m in hints if m != "variance"}
        wrong["variance"] = ref**2
        for m, v in wrong.items():  # a mistake matches if it is within its tolerance in every miss
            d = abs(math.log(got / v))
            distance[m] = max(distance[m], d / hints[m][1])
    if first_miss is None:
        passed(name, "4 random units, batches of 3 and 4, all possible batches")
        return
    likely = min(distance, key=distance.get)
    if distance[likely] < 1:
        raise CheckFailed(f"{name}: {hints[likely][0]}")
    raise CheckFailed(f"{name}: {first_miss}")


def _fit_noise(out: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per unit, the least-squares ``out = a * x_hat + b``: ``(a, b, largest relative residual)``."""
    a = (out * x_hat).mean(0) / (x_hat**2).mean(0)
    b = out.mean(0)
    residual = ((out - a * x_hat - b).abs().amax() / out.abs().amax()).item()
    return a, b, residual


def noisy_batch_norm(fn) -> None:
    """Check ``fn(x, shift, max_scale)``: ``s * BN(x) + m`` with, per unit and new at every call,
    ``m ~ U(-shift, shift)`` and ``s ~ U(1, max_scale)`` (the training-mode forward of
    :class:`bncourse.lab.benefits.NoisyBatchNorm1d` at its initial gamma and beta)."""
    name = "noisy_batch_norm"
    batch, units = 16, 500
    for seed, shift, top in ((0, 1.0, 2.0), (1, 2.0, 3.0), (2, 0.5, 1.5)):
        gen = generator(seed)
        x = torch.randn(batch, units, generator=gen, dtype=torch.float64) * 3 + 1
        x_hat = batch_norm(x, None, None, training=True, eps=EPS)
        where = f"(shift = {shift}, max_scale = {top})"
        fits = []
        for _ in range(2):
            x_in = x.clone()
            out = as_tensor(call(fn, x_in, shift, top, name=name), name, x).detach()
            if not torch.equal(x_in, x):
                raise CheckFailed(f"{name}: the function changed x in place; leave it as it was")
            fits.append(_fit_noise(out, x_hat))
        (a, b, residual), (a2, b2, _) = fits
        if residual > 1e-6:
            raise CheckFailed(
                f"{name}: a unit's output is not one scale times its batch-normalized input plus one "
                f"shift: normalize each unit (column) over the batch (dim 0), and draw one scale and "
                f"one shift per unit, the same for every example of the batch {where}")
        if (a - 1).abs().amax() < 1e-4 and b.abs().amax() < 1e-4:
            raise CheckFailed(
                f"{name}: the output is plain BN(x), with no noise left. If you added the noise before "
                f"normalizing, batch norm removed it (it undoes any per-unit scale and shift): add it "
                f"to the normalized output {where}")
        for got, again, what in ((a, a2, "scale"), (b, b2, "shift")):
            if torch.allclose(got, again, rtol=1e-9, atol=1e-12):
                raise CheckFailed(f"{name}: each unit gets the same {what} at every call; draw new "
                                  f"noise inside the function at each call (and do not reseed) {where}")
            if got.std() < 1e-9:
                raise CheckFailed(f"{name}: every unit gets the same {what}; draw one per unit "
                                  f"(a vector of {units}) {where}")
        a, b = torch.cat([a, a2]), torch.cat([b, b2])
        unbiased = math.sqrt((batch - 1) / batch)
        if a.min() < 1 - 1e-4 and (a / unbiased).min() > 1 - 1e-4:
            raise CheckFailed(f"{name}: you normalized with the unbiased variance (n - 1); batch norm "
                              f"uses the biased one {where}")
        if a.min() < 1 - 1e-4 or a.max() > top * (1 + 1e-4):
            raise CheckFailed(f"{name}: scales from {a.min():.3g} to {a.max():.3g}; draw them from "
                              f"U(1, max_scale): 1 + (max_scale - 1) * u with u ~ U(0, 1) {where}")
        if b.abs().max() > shift * (1 + 1e-4):
            raise CheckFailed(f"{name}: shifts from {b.min():.3g} to {b.max():.3g}, outside "
                              f"[-shift, shift]; draw them from U(-shift, shift) {where}")
        if b.min() >= 0:
            raise CheckFailed(f"{name}: every shift is >= 0; draw them from U(-shift, shift), not "
                              f"U(0, shift), so that the mean moves both ways {where}")
        u_a, u_b = (a - 1) / (top - 1), (b + shift) / (2 * shift)  # both should be U(0, 1)
        for u, what in ((u_a, "scales"), (u_b, "shifts")):
            if abs(u.mean() - 0.5) > 0.06 or abs(u.std() / math.sqrt(1 / 12) - 1) > 0.15:
                raise CheckFailed(f"{name}: the {what} are not uniform over their range: over "
                                  f"{len(u)} units their mean and spread are off {where}")
    passed(name, "3 noise levels, 500 units: per-unit, fresh, uniform noise")
