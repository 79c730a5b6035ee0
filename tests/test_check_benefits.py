"""The exercise checks of Chapter 5: right answers pass, typical wrong ones get their own message."""

import pytest
import torch

import bncourse as bn
from bncourse.functional import batch_norm
from bncourse.lab.benefits import batch_noise, scaled_digits
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


@pytest.mark.parametrize("name", ["grad_at_scaled_weight", "scaled_gradient", "gradient_change",
                                  "batch_jitter", "decay_norm_params"])
def test_unattempted_exercises_say_so(name):
    def todo(*args):
        raise NotImplementedError

    with pytest.raises(CheckFailed, match="not attempted"):
        getattr(check, name)(todo)


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


# ------------------------------------------------------------------- scaled_gradient (derive)
def scaled_right(grad_at_w, k, eps):
    return grad_at_w(eps / k**2) / k


def test_scaled_gradient_accepts_the_exact_rule(capsys):
    check.scaled_gradient(scaled_right)
    assert "✔ scaled_gradient: correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda g, k, eps: g(eps) / k, "the rule without epsilon"),
    (lambda g, k, eps: g(eps / k**2), "factor 1/k of the chain rule is missing"),
    (lambda g, k, eps: k * g(eps / k**2), "multiplied by k"),
    (lambda g, k, eps: g(eps * k**2) / k, "not eps \\* k\\^2"),
    (lambda g, k, eps: g(eps / k) / k, "eps / k should be eps / k\\^2"),
    (lambda g, k, eps: g(1e-5 / k**2) / k, "wrong gradient"),  # eps hard-coded
    (lambda g, k, eps: g(-eps), "a number >= 0"),
    (lambda g, k, eps: g(eps)[:1], "expected a result of shape"),
])
def test_scaled_gradient_names_the_mistake(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.scaled_gradient(wrong)


def test_scaled_gradient_speaks_chinese(monkeypatch):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed, match="漏掉了链式法则的因子 1/k"):
        check.scaled_gradient(lambda g, k, eps: g(eps / k**2))


# ------------------------------------------------------------------ decay_norm_params (diagnose)
DIGITS = scaled_digits()
WD = 0.3


def trainer(groups, steps=200, lr=0.1):
    """The page's script with the optimizer's parameter groups given by ``groups(model)``."""
    def train(seed):
        bn.seed_everything(seed)
        model = bn.models.mlp([64, 100, 100, 10], activation="relu", norm="bn")
        opt = torch.optim.SGD(groups(model), lr=lr)
        g = bn.generator(seed)
        for _ in range(steps):
            i = torch.randint(len(DIGITS.x_train), (60,), generator=g)
            loss = torch.nn.functional.cross_entropy(model(DIGITS.x_train[i]), DIGITS.y_train[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model
    return train


def linear_weights_only(model):
    decay = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    rest = [p for p in model.parameters() if all(p is not q for q in decay)]
    return [{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}]


def test_decay_norm_params_accepts_the_fix(capsys):
    check.decay_norm_params(trainer(linear_weights_only), seeds=(11,))
    assert "✔ decay_norm_params: correct" in capsys.readouterr().out


@pytest.mark.parametrize("groups, message", [
    (lambda m: [{"params": m.parameters(), "weight_decay": WD}], "gamma shrank"),  # the bug itself
    (lambda m: [{"params": m.parameters(), "weight_decay": 0.0}], "no longer acts on them"),
    (lambda m: [{"params": m.parameters(), "weight_decay": 0.01}], "not its strength"),
])
def test_decay_norm_params_names_the_mistake(groups, message):
    with pytest.raises(CheckFailed, match=message):
        check.decay_norm_params(trainer(groups), seeds=(11,))


def test_decay_norm_params_wants_the_model_back():
    with pytest.raises(CheckFailed, match="return the trained model"):
        check.decay_norm_params(lambda seed: None, seeds=(11,))
    with pytest.raises(CheckFailed, match="no batch-norm layer"):
        check.decay_norm_params(lambda seed: bn.models.mlp([64, 100, 10], activation="relu"),
                                seeds=(11,))


def test_the_other_checks_speak_chinese(monkeypatch):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed, match="这是范数的平方"):
        check.gradient_change(lambda loss, theta, eta: change_reference(loss, theta, eta) ** 2)
    with pytest.raises(CheckFailed, match="请返回它的标准差"):
        check.batch_jitter(lambda h, i, b, d: jitter(h, i, b, d) ** 2)
    with pytest.raises(CheckFailed, match="没有批标准化层"):
        check.decay_norm_params(lambda seed: bn.models.mlp([64, 100, 10], activation="relu"),
                                seeds=(11,))


# ---------------------------------------------------------------------------------- predictions
@pytest.mark.parametrize("predict, measured, low_guess, high_guess", [
    (check.predict_largest_lr, 3.0, 0.03, 10.0),
    (check.predict_speedup, 8.0, 0.1, 100.0),
])
def test_predictions_pass_any_honest_guess_and_explain_the_gap(predict, measured, low_guess,
                                                               high_guess, capsys):
    for guess in (low_guess, measured, high_guess):
        predict(guess, measured)
    out = capsys.readouterr().out
    assert all(len(line) <= 88 for line in out.splitlines())  # wrapped to the page's column
    out = out.replace("\n  ", " ")
    assert out.count("correct") == 3 and "spot on" in out and "below the run" in out
    for stub, message in ((None, "expected your prediction as a number"),
                          (float("nan"), "expected your prediction as a number"),
                          (high_guess * 20, "outside")):
        with pytest.raises(CheckFailed, match=message):
            predict(stub, measured)


def test_predictions_explain_in_chinese(monkeypatch, capsys):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    check.predict_largest_lr(1.0, 3.0)
    check.predict_speedup(3.0, 8.0)
    out = capsys.readouterr().out
    assert all(bn.check.core.columns(line) <= 88 for line in out.splitlines())  # the page column
    out = out.replace("\n  ", "")
    assert "有效学习率" in out and "饱和区" in out
