"""The exercise checks of Chapter 5: right answers pass, typical wrong ones get their own message."""

import pytest
import torch

from bncourse.functional import batch_norm
from bncourse.lab.benefits import NoisyBatchNorm1d, batch_noise
from bncourse.teach import check
from bncourse.teach.check import CheckFailed
from bncourse.teach.check.benefits import exact_jitter


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
                                  "gradient_change", "batch_jitter", "noisy_batch_norm"])
def test_unattempted_exercises_say_so(name):
    def todo(*args):
        raise NotImplementedError

    with pytest.raises(CheckFailed, match="not attempted"):
        getattr(check, name)(todo)


# ---------------------------------------------------------------------------------- steps_fraction
def fraction_reference(eval_step, plain_acc, bn_acc):
    target = plain_acc[-1]
    for step, acc in zip(eval_step, bn_acc, strict=True):
        if acc >= target:
            return step / eval_step[-1]
    return None


def fraction_variant(eval_step, plain_acc, bn_acc, *, target=None, strict=False, indices=False,
                     saved=False, raw=False, never=0.0):
    target = plain_acc[-1] if target is None else target(plain_acc)
    for i, (step, acc) in enumerate(zip(eval_step, bn_acc, strict=True)):
        if (acc > target) if strict else (acc >= target):
            if raw:
                return step
            value = i / (len(eval_step) - 1) if indices else step / eval_step[-1]
            return 1 - value if saved else value
    return never


def test_steps_fraction_accepts_the_reference(capsys):
    check.steps_fraction(fraction_reference)
    assert "✔ steps_fraction: correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda s, p, n: fraction_variant(s, p, n, target=lambda a: max(a), never=None), "not its best"),
    (lambda s, p, n: fraction_variant(s, p, n, strict=True, never=None), "compare with >="),
    (lambda s, p, n: fraction_variant(s, p, n, indices=True, never=None), "evaluation indices"),
    (lambda s, p, n: fraction_variant(s, p, n, saved=True, never=None), "steps saved"),
    (lambda s, p, n: fraction_variant(s, p, n, raw=True, never=None), "number of steps"),
    (lambda s, p, n: fraction_variant(s, p, n, never=1.0), "return None"),
    (lambda s, p, n: fraction_reference(s, n, p), "returned None, but"),
    (lambda s, p, n: "0.5", "a fraction"),
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


# ------------------------------------------------------------------------------------ batch_jitter
def jitter(h, index, b, draws, *, mistake=None):
    """The sampled std of example ``index``'s normalized value, right or as a typical mistake."""
    n = len(h)
    if mistake == "full data":
        mean, var = h.mean().expand(draws), h.var(unbiased=False).expand(draws)
    else:
        if mistake == "may miss it":
            batch = h[torch.rand(draws, n).argsort(dim=1)[:, :b]]
        else:
            others = torch.cat([h[:index], h[index + 1:]])
            k = b if mistake in ("one more", "batch of others") else b - 1
            batch = others[torch.rand(draws, n - 1).argsort(dim=1)[:, :k]]
            if mistake not in ("others only", "batch of others"):
                batch = torch.cat([h[index].expand(draws, 1), batch], dim=1)
        mean, var = batch.mean(1), batch.var(1, unbiased=mistake == "unbiased")
    value = ((h[index] - mean) / torch.sqrt(var + 1e-5)).std().item()
    return value**2 if mistake == "variance" else value


def jitter_loop(h, index, b, draws):
    """A learner's plain loop, one batch at a time."""
    others = [j for j in range(len(h)) if j != index]
    values = []
    for _ in range(draws):
        batch = h[[index] + [others[j] for j in torch.randperm(len(others))[: b - 1].tolist()]]
        values.append((h[index] - batch.mean()) / torch.sqrt(batch.var(unbiased=False) + 1e-5))
    return torch.stack(values).std()


def test_exact_jitter_is_what_batch_noise_estimates():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(14, generator=gen, dtype=torch.float64)
    for index, b in ((0, 3), (5, 5)):
        sampled = batch_noise(h[:, None], index, [b], draws=20000, generator=gen).item()
        assert sampled == pytest.approx(exact_jitter(h, index, b), rel=0.03)


@pytest.mark.parametrize("right", [lambda h, i, b, d: jitter(h, i, b, d), jitter_loop])
def test_batch_jitter_accepts_right_answers(right, capsys):
    torch.manual_seed(0)
    check.batch_jitter(right)
    assert "✔ batch_jitter: correct" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, message", [
    ("full data", "statistics of all N"),
    ("unbiased", "unbiased variance"),
    ("one more", "not batch_size others"),
    ("others only", "own value must enter"),
    ("batch of others", "own value must enter"),
    ("may miss it", "own value must enter"),
    ("variance", "return its standard deviation"),
])
def test_batch_jitter_names_the_mistake(mistake, message):
    torch.manual_seed(0)
    with pytest.raises(CheckFailed, match=message):
        check.batch_jitter(lambda h, i, b, d: jitter(h, i, b, d, mistake=mistake))


def test_batch_jitter_catches_bad_returns():
    def centres_in_place(h, i, b, d):
        h -= h.mean()
        return jitter(h, i, b, d)

    for wrong, message in ((centres_in_place, "in place"), (lambda h, i, b, d: None, "returned None"),
                           (lambda h, i, b, d: [0.5], "one number"),
                           (lambda h, i, b, d: float("nan"), "not a finite number"),
                           (lambda h, i, b, d: 1.3 * jitter(h, i, b, d), "expected about")):
        with pytest.raises(CheckFailed, match=message):
            check.batch_jitter(wrong)


# -------------------------------------------------------------------------------- noisy_batch_norm
def uniform(x, low, high, size=None, generator=None):
    size = (x.shape[1],) if size is None else size
    return low + (high - low) * torch.rand(size, generator=generator, dtype=x.dtype)


def noisy(x, shift, top, *, scale=None, offset=None, before=False, dim=0, unbiased=False):
    """``s * BN(x) + m``, right or with a typical mistake: ``scale(x, top)`` and ``offset(x, shift)``
    draw the noise in place of the right ``U(1, top)`` and ``U(-shift, shift)`` per unit."""
    s = uniform(x, 1, top) if scale is None else scale(x, top)
    m = uniform(x, -shift, shift) if offset is None else offset(x, shift)
    if before:
        x = s * x + m
    out = (x - x.mean(dim, keepdim=True)) / torch.sqrt(x.var(dim, unbiased=unbiased, keepdim=True) + 1e-5)
    return out if before else s * out + m


def seeded():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("right", [
    noisy,
    lambda x, shift, top: NoisyBatchNorm1d(x.shape[1], shift, top)(x),
    lambda x, shift, top: NoisyBatchNorm1d(x.shape[1], shift, top)(x.float()),
])
def test_noisy_batch_norm_accepts_right_answers(right, capsys):
    check.noisy_batch_norm(right)
    assert "✔ noisy_batch_norm: correct" in capsys.readouterr().out


@pytest.mark.parametrize("kw, message", [
    ({"before": True}, "no noise left"),
    ({"scale": lambda x, top: torch.ones(x.shape[1], dtype=x.dtype), "offset": lambda x, s: 0.0},
     "no noise left"),
    ({"scale": lambda x, top: uniform(x, 1, top, generator=seeded())}, "same scale at every call"),
    ({"offset": lambda x, s: uniform(x, -s, s, generator=seeded())}, "same shift at every call"),
    ({"scale": lambda x, top: uniform(x, 1, top, size=(1,))}, "every unit gets the same scale"),
    ({"offset": lambda x, s: uniform(x, -s, s, size=(1,))}, "every unit gets the same shift"),
    ({"scale": lambda x, top: uniform(x, 1, top, size=x.shape)}, "not one scale times"),
    ({"dim": 1}, "not one scale times"),
    ({"unbiased": True}, "unbiased variance"),
    ({"scale": lambda x, top: uniform(x, 0, top)}, "scales from"),
    ({"scale": lambda x, top: uniform(x, 1, 2 * top)}, "scales from"),
    ({"offset": lambda x, s: uniform(x, 0, s)}, "every shift is >= 0"),
    ({"offset": lambda x, s: s * torch.randn(x.shape[1], dtype=x.dtype)}, "outside"),
    ({"scale": lambda x, top: 1 + (top - 1) * uniform(x, 0, 1) ** 2}, "scales are not uniform"),
    ({"offset": lambda x, s: s * (2 * uniform(x, 0, 1) ** 3 - 1)}, "shifts are not uniform"),
])
def test_noisy_batch_norm_names_the_mistake(kw, message):
    with pytest.raises(CheckFailed, match=message):
        check.noisy_batch_norm(lambda x, shift, top: noisy(x, shift, top, **kw))


def test_noisy_batch_norm_catches_bad_returns():
    def normalizes_in_place(x, shift, top):
        x -= x.mean(0)
        return noisy(x, shift, top)

    for wrong, message in ((normalizes_in_place, "in place"),
                           (lambda x, shift, top: None, "returned None"),
                           (lambda x, shift, top: noisy(x, shift, top).T, "expected a result of shape")):
        with pytest.raises(CheckFailed, match=message):
            check.noisy_batch_norm(wrong)
