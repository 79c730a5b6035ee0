"""The exercise checks of Chapter 5: right answers pass, typical wrong ones get their own message."""

import pytest
import torch

from bncourse import check
from bncourse.check import CheckFailed
from bncourse.functional import batch_norm


# ------------------------------------------------------------------------- grad_at_scaled_weight
def grad_reference(x, w, k, dout):
    v = (k * w).requires_grad_()
    out = batch_norm(x @ v.T, None, None, training=True, eps=1e-5)
    (out * dout).sum().backward()
    return v.grad


def grad_variant(x, w, k, dout, *, eps=1e-5, unbiased=False, detach=False):
    v = (k * w).requires_grad_()
    h = x @ v.T
    mean, var = h.mean(0), h.var(0, unbiased=unbiased)
    if detach:
        mean, var = mean.detach(), var.detach()
    ((h - mean) / torch.sqrt(var + eps) * dout).sum().backward()
    return v.grad


def grad_wrt_w(x, w, k, dout):
    w = w.clone().requires_grad_()
    out = batch_norm(x @ (k * w).T, None, None, training=True, eps=1e-5)
    (out * dout).sum().backward()
    return w.grad


def test_grad_at_scaled_weight_accepts_the_reference(capsys):
    check.grad_at_scaled_weight(grad_reference)
    assert "✔ grad_at_scaled_weight: correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (grad_wrt_w, "with respect to W of L\\(kW\\)"),
    (lambda x, w, k, d: grad_reference(x, w, 1.0, d), "gradient at W, not at V = kW"),
    (lambda x, w, k, d: k * grad_reference(x, w, 1.0, d), "k times the gradient at W"),
    (lambda x, w, k, d: grad_variant(x, w, k, d, eps=0.0), "eps is missing"),
    (lambda x, w, k, d: grad_variant(x, w, k, d, unbiased=True), "unbiased variance"),
    (lambda x, w, k, d: grad_variant(x, w, k, d, detach=True), "depend on V"),
    (lambda x, w, k, d: grad_reference(x, w, k, d).T, "expected a result of shape"),
    (lambda x, w, k, d: None, "returned None"),
    (lambda x, w, k, d: grad_reference(x, w, k, d) * 1.1, "relative error"),
])
def test_grad_at_scaled_weight_names_the_mistake(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.grad_at_scaled_weight(wrong)


def test_grad_at_scaled_weight_catches_an_in_place_change():
    def scales_w_in_place(x, w, k, dout):
        w.mul_(k)
        return grad_reference(x, w, 1.0, dout)

    with pytest.raises(CheckFailed, match="in place"):
        check.grad_at_scaled_weight(scales_w_in_place)


# --------------------------------------------------------------------------- largest_trainable_lr
def largest_reference(lrs, acc, threshold):
    ok = [lr for lr, row in zip(lrs, acc, strict=True) if bool((row >= threshold).all())]
    return max(ok) if ok else None


def by_mean(lrs, acc, threshold):
    ok = [lr for lr, row in zip(lrs, acc, strict=True) if row.nanmean() >= threshold]
    return max(ok) if ok else None


def by_any(lrs, acc, threshold):
    ok = [lr for lr, row in zip(lrs, acc, strict=True) if bool((row >= threshold).any())]
    return max(ok) if ok else None


def strict(lrs, acc, threshold):
    ok = [lr for lr, row in zip(lrs, acc, strict=True) if bool((row > threshold).all())]
    return max(ok) if ok else None


def smallest(lrs, acc, threshold):
    ok = [lr for lr, row in zip(lrs, acc, strict=True) if bool((row >= threshold).all())]
    return min(ok) if ok else None


def last_listed(lrs, acc, threshold):
    ok = [lr for lr, row in zip(lrs, acc, strict=True) if bool((row >= threshold).all())]
    return ok[-1] if ok else None


def index_of(lrs, acc, threshold):
    ok = [i for i, row in enumerate(acc) if bool((row >= threshold).all())]
    return max(ok, key=lambda i: lrs[i]) if ok else None


def never_none(lrs, acc, threshold):
    return largest_reference(lrs, acc, threshold) or 0.0


def test_largest_trainable_lr_accepts_the_reference(capsys):
    check.largest_trainable_lr(largest_reference)
    assert "✔ largest_trainable_lr: correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (by_mean, "averaged over the seeds"),
    (by_any, "not just one of them"),
    (strict, "compare with >="),
    (smallest, "smallest rate"),
    (last_listed, "not sorted"),
    (index_of, "index of the rate"),
    (never_none, "return None"),
    (lambda lrs, acc, t: "0.1", "a float"),
    (lambda lrs, acc, t: 123.0, "expected"),
])
def test_largest_trainable_lr_names_the_mistake(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.largest_trainable_lr(wrong)


@pytest.mark.parametrize("name", ["grad_at_scaled_weight", "largest_trainable_lr", "steps_fraction",
                                  "gradient_change"])
def test_unattempted_exercises_say_so(name):
    def todo(*args):
        raise NotImplementedError

    with pytest.raises(CheckFailed, match="not attempted"):
        getattr(check, name)(todo)


# ---------------------------------------------------------------------------------- steps_fraction
def fraction_reference(plain, normed):
    target = plain.test_acc[-1]
    for step, acc in zip(normed.eval_step, normed.test_acc, strict=True):
        if acc >= target:
            return step / plain.eval_step[-1]
    return None


def fraction_variant(plain, normed, *, target=None, strict=False, indices=False, saved=False,
                     raw=False, never=0.0):
    target = plain.test_acc[-1] if target is None else target(plain)
    for i, (step, acc) in enumerate(zip(normed.eval_step, normed.test_acc, strict=True)):
        if (acc > target) if strict else (acc >= target):
            if raw:
                return step
            value = i / (len(normed.eval_step) - 1) if indices else step / plain.eval_step[-1]
            return 1 - value if saved else value
    return never


def test_steps_fraction_accepts_the_reference(capsys):
    check.steps_fraction(fraction_reference)
    assert "✔ steps_fraction: correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda p, n: fraction_variant(p, n, target=lambda h: max(h.test_acc), never=None), "not its best"),
    (lambda p, n: fraction_variant(p, n, strict=True, never=None), "compare with >="),
    (lambda p, n: fraction_variant(p, n, indices=True, never=None), "evaluation indices"),
    (lambda p, n: fraction_variant(p, n, saved=True, never=None), "steps saved"),
    (lambda p, n: fraction_variant(p, n, raw=True, never=None), "number of steps"),
    (lambda p, n: fraction_variant(p, n, never=1.0), "return None"),
    (lambda p, n: fraction_reference(n, p), "returned None, but"),
    (lambda p, n: "0.5", "a fraction"),
])
def test_steps_fraction_names_the_mistake(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.steps_fraction(wrong)


# --------------------------------------------------------------------------------- gradient_change
def grad_of(loss, theta):
    t = theta.detach().clone().requires_grad_()
    return torch.autograd.grad(loss(t), t)[0]


def change_reference(loss, theta, eta):
    g = grad_of(loss, theta)
    return (grad_of(loss, theta - eta * g) - g).norm().item()


def test_gradient_change_accepts_the_reference(capsys):
    check.gradient_change(change_reference)
    assert "✔ gradient_change: correct" in capsys.readouterr().out


def uphill(loss, theta, eta):
    g = grad_of(loss, theta)
    return (grad_of(loss, theta + eta * g) - g).norm().item()


def steps_in_place(loss, theta, eta):
    g = grad_of(loss, theta)
    theta -= eta * g
    return (grad_of(loss, theta) - g).norm().item()


@pytest.mark.parametrize("wrong, message", [
    (uphill, "along \\+g"),
    (lambda f, t, e: change_reference(f, t, e) / grad_of(f, t).norm().item(), "relative to"),
    (lambda f, t, e: change_reference(f, t, e) / (e * grad_of(f, t).norm().item()), "beta"),
    (lambda f, t, e: grad_of(f, t - e * grad_of(f, t)).norm().item(), "norm of the new gradient"),
    (lambda f, t, e: change_reference(f, t, e) ** 2, "square root"),
    (lambda f, t, e: abs(f(t - e * grad_of(f, t)).item() - f(t).item()), "change of the loss"),
    (steps_in_place, "in place"),
    (lambda f, t, e: [1.0, 2.0], "one number"),
    (lambda f, t, e: None, "returned None"),
    (lambda f, t, e: 1.5 * change_reference(f, t, e), "expected"),
])
def test_gradient_change_names_the_mistake(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.gradient_change(wrong)
