"""The Chapter 3 exercise checks: right answers pass, each typical mistake is named."""

import itertools

import pytest
import torch

import bncourse as bn
from bncourse.teach.check import CheckFailed


def stats(x, dims, unbiased=False):
    return x.mean(dims, keepdim=True), x.var(dims, keepdim=True, correction=int(unbiased))


def view(v, x):
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


# ---- bn_forward ----------------------------------------------------------------------------

def forward(x, gamma, beta, eps=1e-5, dims=None, unbiased=False, how="inside", affine="right"):
    dims = (0, *range(2, x.dim())) if dims is None else dims
    mean, var = stats(x, dims, unbiased)
    denominator = {"inside": lambda: torch.sqrt(var + eps), "none": lambda: torch.sqrt(var),
                   "outside": lambda: torch.sqrt(var) + eps, "nosqrt": lambda: var + eps}[how]()
    x_hat = (x - mean) / denominator
    if affine == "none":
        return x_hat
    if affine == "swapped":
        return view(beta, x) * x_hat + view(gamma, x)
    return view(gamma, x) * x_hat + view(beta, x)


def test_bn_forward_passes_the_reference(capsys):
    bn.check.bn_forward(forward)
    assert "✔ bn_forward: correct" in capsys.readouterr().out


def test_bn_forward_passes_float32_work(capsys):
    bn.check.bn_forward(lambda x, g, b, eps: forward(x.float(), g.float(), b.float(), eps))
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (dict(unbiased=True), "unbiased variance"),
    (dict(how="none"), "eps is missing"),
    (dict(how="outside"), "outside the square root"),
    (dict(how="nosqrt"), "divides by the variance"),
    (dict(affine="none"), "gamma and beta are not applied"),
    (dict(affine="swapped"), "gamma and beta are swapped"),
    (dict(dims=(1,)), "layer normalization"),
    (dict(dims="all"), "all the elements at once"),
])
def test_bn_forward_names_the_mistake(wrong, message):
    def fn(x, gamma, beta, eps):
        kw = dict(wrong)
        if kw.get("dims") == "all":
            kw["dims"] = tuple(range(x.dim()))
        return forward(x, gamma, beta, eps, **kw)

    with pytest.raises(CheckFailed, match=message):
        bn.check.bn_forward(fn)


@pytest.mark.parametrize("dims, message", [((0,), "one mean per position"),
                                           ((2, 3), "instance normalization")])
def test_bn_forward_names_wrong_axes_for_images(dims, message):
    def fn(x, gamma, beta, eps):
        return forward(x, gamma, beta, eps, dims=dims if x.dim() == 4 else (0,))

    with pytest.raises(CheckFailed, match=message):
        bn.check.bn_forward(fn)


def test_bn_forward_ignoring_the_eps_argument_is_caught():
    with pytest.raises(CheckFailed, match="eps"):
        bn.check.bn_forward(lambda x, g, b, eps: forward(x, g, b, 1e-5))


@pytest.mark.parametrize("fn, message", [
    (lambda x, g, b, eps: None, "returned None"),
    (lambda x, g, b, eps: (forward(x, g, b, eps), None), "got a tuple"),
    (lambda x, g, b, eps: forward(x, g, b, eps)[:2], "expected shape"),
    (lambda x, g, b, eps: x + 1.0, "differs from the reference"),
])
def test_bn_forward_other_failures(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.bn_forward(fn)


def not_attempted(*args):
    raise NotImplementedError


@pytest.mark.parametrize("check", ["bn_forward", "identity_gap", "bias_shift", "hand_written_layer",
                                   "bn_backward", "gradient_kept", "numeric_gradient"])
def test_not_attempted(check):
    with pytest.raises(CheckFailed, match="not attempted"):
        getattr(bn.check, check)(not_attempted)


# ---- identity_gap --------------------------------------------------------------------------

def gap_first_order(m):
    return 1 / m + 1 / (2 * m)


def test_identity_gap_passes_the_exact_value_and_the_first_order_one(capsys):
    bn.check.identity_gap(bn.check.flow.identity_gap_exact)
    bn.check.identity_gap(gap_first_order)
    out = " ".join(capsys.readouterr().out.split())  # the pass message wraps to the page's width
    assert out.count("✔ identity_gap: correct") == 2 and "measured on 20,000 batches" in out


def test_the_exact_gap_is_what_a_simulation_measures():
    for m in (3, 5, 16, 64):
        exact, measured = bn.check.flow.identity_gap_exact(m), bn.check.flow.identity_gap_measured(m)
        assert abs(measured - exact) < 0.03 * exact  # 20,000 batches: about 1% standard error


@pytest.mark.parametrize("fn, message", [
    (lambda m: 0.0, "the identity is exact only in eval mode"),
    (lambda m: 1 / m, "but not that of the batch standard deviation"),
    (lambda m: 1 / (2 * m), "but not that of the batch mean"),
    (lambda m: 3 / m, "variance of the batch variance"),
    (lambda m: gap_first_order(m) ** 0.5, "root mean square"),
    (lambda m: 2 / m, "not within 7% of the exact value"),
    (lambda m: None, "returned None"),
    (lambda m: "small", "expected one number"),
    (lambda m: float("nan"), "not finite"),
    (lambda m: torch.randn(100_000, m).var(1, correction=0).mean().item(), "write your own"),
])
def test_identity_gap_names_the_mistake(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.identity_gap(fn)


# ---- gradient_kept -------------------------------------------------------------------------

def test_gradient_kept_passes_the_exact_fraction(capsys):
    bn.check.gradient_kept(lambda m: (m - 2) / m)
    out = " ".join(capsys.readouterr().out.split())  # the pass message wraps to the page's width
    assert "✔ gradient_kept: correct" in out and "measured with the backward pass" in out


def test_the_kept_fraction_is_what_the_backward_pass_measures():
    for m in (3, 4, 8, 32):
        measured = bn.check.flow.gradient_kept_measured(m, seed=m)
        assert abs(measured - (m - 2) / m) < 0.03  # 4,000 batches: standard error below 0.005


@pytest.mark.parametrize("fn, message", [
    (lambda m: 1.0, "the direct path's own"),
    (lambda m: (m - 1) / m, "counts only the mean removed"),
    (lambda m: 2 / m, "the fraction removed, not the fraction kept"),
    (lambda m: ((m - 2) / m) ** 0.5, "ratio of norms"),
    (lambda m: (m - 2) / (m - 1), "divide by m, not m - 1"),
    (lambda m: m - 2, "the number of directions kept"),
    (lambda m: 0.5, "not the fraction the backward pass keeps"),
    (lambda m: None, "returned None"),
    (lambda m: float("inf"), "not finite"),
    (lambda m: bn.check.flow.gradient_kept_measured(m), "write your own"),
])
def test_gradient_kept_names_the_mistake(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.gradient_kept(fn)


# ---- hand_written_layer --------------------------------------------------------------------

class BuggyBatchNorm1d(torch.nn.Module):
    """The page's buggy layer: the unbiased variance to normalize, the biased one in the buffer."""

    def __init__(self, features, momentum=0.1, eps=1e-5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(features))
        self.bias = torch.nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))
        self.momentum, self.eps = momentum, eps

    def forward(self, x):
        if self.training:
            mean, var = x.mean(0), x.var(0)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(x.var(0, correction=0), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias


def layer(normalize=0, buffer=1, train_running=False, eval_batch=False, reversed_momentum=False):
    """A hand-written layer: the corrections of normalize and buffer (0 biased, 1 unbiased), or a mistake."""
    class Layer(BuggyBatchNorm1d):
        def forward(self, x):
            if self.training:
                mean, var = x.mean(0), x.var(0, correction=normalize)
                weight = 1 - self.momentum if reversed_momentum else self.momentum
                with torch.no_grad():
                    self.running_mean.lerp_(mean, weight)
                    self.running_var.lerp_(x.var(0, correction=buffer), weight)
                if train_running:
                    mean, var = self.running_mean, self.running_var
            elif eval_batch:
                mean, var = x.mean(0), x.var(0, correction=0)
            else:
                mean, var = self.running_mean, self.running_var
            return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias

    return Layer


def test_hand_written_layer_passes_the_fix(capsys):
    bn.check.hand_written_layer(layer())
    assert "✔ hand_written_layer: correct" in capsys.readouterr().out


@pytest.mark.parametrize("cls, message", [
    (BuggyBatchNorm1d, "training-mode output of batch 1 .* unbiased variance"),
    (layer(normalize=1, buffer=1), "training-mode output of batch 1 .* unbiased variance"),
    (layer(normalize=0, buffer=0), "running_var after 12 batches is wrong: it follows the biased"),
    (layer(train_running=True), "normalizes with the running statistics"),
    (layer(eval_batch=True), "eval-mode output is wrong: in eval mode it normalizes with the batch's"),
    (layer(reversed_momentum=True), "running_mean after 12 batches is wrong: momentum is reversed"),
    (type("Torch", (torch.nn.BatchNorm1d,), {}), "write your own"),
    (lambda features: torch.nn.Linear(features, features), "missing: running_mean, running_var"),
    (lambda features: 1 / 0, "creating the layer.*ZeroDivisionError"),
])
def test_hand_written_layer_names_the_mistake(cls, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.hand_written_layer(cls)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_pass_messages_fit_the_page(monkeypatch, capsys, lang):
    monkeypatch.setenv("BNCOURSE_LANG", lang)
    bn.check.gradient_kept(lambda m: (m - 2) / m)
    bn.check.identity_gap(bn.check.flow.identity_gap_exact)
    bn.check.hand_written_layer(layer())
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 3 and all(bn.check.core.columns(line) <= 88 for line in lines)


def test_messages_speak_chinese(monkeypatch):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed, match="训练模式下它用无偏方差做标准化"):
        bn.check.hand_written_layer(BuggyBatchNorm1d)
    with pytest.raises(CheckFailed, match="只算了批均值的噪声"):
        bn.check.identity_gap(lambda m: 1 / m)
    with pytest.raises(CheckFailed, match="还去掉了沿 x_hat 的分量"):
        bn.check.gradient_kept(lambda m: (m - 1) / m)
    with pytest.raises(CheckFailed, match="缺少 eps"):
        bn.check.bn_forward(lambda x, g, b, eps: forward(x, g, b, eps, how="none"))
    with pytest.raises(CheckFailed, match="把 mu 和 sigma\\^2 当成了常数"):
        bn.check.bn_backward(lambda dout, x, g, eps: backward(dout, x, g, eps, paths=()))
    with pytest.raises(CheckFailed, match="除以 2h"):
        bn.check.numeric_gradient(lambda f, x, dout, h: differences(f, x, dout, h, how="over h"))
    with pytest.raises(CheckFailed, match="符号反了"):
        bn.check.bias_shift(lambda b, g, v, eps, training: -shift(b, g, v, eps, training))


# ---- bias_shift ----------------------------------------------------------------------------

def shift(b, gamma, running_var, eps, training):
    if training:
        return torch.zeros_like(b)
    return gamma * b / torch.sqrt(running_var + eps)


def test_bias_shift_passes_the_reference(capsys):
    bn.check.bias_shift(shift)
    assert "✔ bias_shift: correct" in capsys.readouterr().out


def test_bias_shift_accepts_a_scalar_zero_in_training(capsys):
    bn.check.bias_shift(lambda b, g, v, eps, training: 0.0 if training else shift(b, g, v, eps, 0))
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn, message", [
    (lambda b, g, v, eps, training: shift(b, g, v, eps, False), "training-mode shift is wrong"),
    (lambda b, g, v, eps, training: torch.zeros_like(b), "does not absorb the bias"),
    (lambda b, g, v, eps, training: 0 * b if training else b, "does not pass through unchanged"),
    (lambda b, g, v, eps, training: 0 * b if training else g * b / v.sqrt(), "eps is missing"),
    (lambda b, g, v, eps, training: 0 * b if training else b / (v + eps).sqrt(),
     "gamma is missing"),
    (lambda b, g, v, eps, training: 0 * b if training else g * b / (v + eps),
     "square root is missing"),
    (lambda b, g, v, eps, training: -shift(b, g, v, eps, training), "sign is wrong"),
])
def test_bias_shift_names_the_mistake(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.bias_shift(fn)


# ---- bn_backward ---------------------------------------------------------------------------

def backward(dout, x, gamma, eps, paths=("mu", "var"), unbiased=False, dims=(0,), scale=True):
    mean, var = stats(x, dims, unbiased)
    inv_std = 1 / torch.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    dx_hat = dout * gamma if scale else dout
    dx = dx_hat
    if "mu" in paths:
        dx = dx - dx_hat.mean(dims, keepdim=True)
    if "var" in paths:
        dx = dx - x_hat * (dx_hat * x_hat).mean(dims, keepdim=True)
    return inv_std * dx, (dout * x_hat).sum(0), dout.sum(0)


def test_bn_backward_passes_the_reference(capsys):
    bn.check.bn_backward(backward)
    assert "✔ bn_backward: correct" in capsys.readouterr().out


def test_bn_backward_passes_autograd(monkeypatch):
    monkeypatch.setitem(bn.check.core.WRITE_YOUR_OWN, "bn_backward", ())  # a reference, not an answer
    def fn(dout, x, gamma, eps):
        x, gamma = x.clone().requires_grad_(), gamma.clone().requires_grad_()
        beta = torch.zeros_like(gamma, requires_grad=True)
        out = torch.nn.functional.batch_norm(x, None, None, gamma, beta, True, 0.1, eps)
        return torch.autograd.grad(out, (x, gamma, beta), dout)

    bn.check.bn_backward(fn)


@pytest.mark.parametrize("kw, message", [
    (dict(paths=()), "treats mu and sigma"),
    (dict(paths=("mu",)), "not the one through sigma"),
    (dict(paths=("var",)), "not the one through mu"),
    (dict(unbiased=True), "unbiased variance"),
    (dict(eps=0.0), "eps is missing"),
    (dict(scale=False), "factor gamma is missing"),
    (dict(dims=(1,)), "wrong axis"),
])
def test_bn_backward_names_the_dx_mistake(kw, message):
    def fn(dout, x, gamma, eps):
        args = {"eps": eps, **kw}
        return backward(dout, x, gamma, **args)

    with pytest.raises(CheckFailed, match=message):
        bn.check.bn_backward(fn)


@pytest.mark.parametrize("wrong, message", [
    (lambda dx, dg, db, dout, x: (dx, db, dg), "swapped"),
    (lambda dx, dg, db, dout, x: (dx, dout.sum(0), db), "sums dout alone"),
    (lambda dx, dg, db, dout, x: (dx, (dout * x).sum(0), db), "x instead of the normalized"),
    (lambda dx, dg, db, dout, x: (dx, dg / x.shape[0], db), "dgamma is wrong: it is a mean"),
    (lambda dx, dg, db, dout, x: (dx, dg, db / x.shape[0]), "dbeta is wrong: it is a mean"),
    (lambda dx, dg, db, dout, x: (dx, dg, dout.sum(1)), "sum over the batch, dim 0"),
    (lambda dx, dg, db, dout, x: dx, "expected a triple"),
])
def test_bn_backward_names_the_parameter_mistake(wrong, message):
    def fn(dout, x, gamma, eps):
        return wrong(*backward(dout, x, gamma, eps), dout, x)

    with pytest.raises(CheckFailed, match=message):
        bn.check.bn_backward(fn)


def test_checks_are_exported():
    for name in ("bn_forward", "identity_gap", "bias_shift", "hand_written_layer", "bn_backward",
                 "numeric_gradient"):
        assert name in bn.check.flow.__all__
        assert callable(getattr(bn.check, name))


# ---- numeric_gradient ----------------------------------------------------------------------

def differences(f, x, dout, h=1e-5, how="central", restore=True, view_as_old=False):
    """Finite differences of sum(f() * dout), f reading x, done right or one of the usual wrong ways."""
    grad, flat = torch.zeros_like(x), x.view(-1)
    loss = lambda: (f() * dout).sum()  # noqa: E731
    base = loss()
    for i in range(flat.numel()):
        old = flat[i] if view_as_old else flat[i].item()
        flat[i] = old + h
        plus = loss()
        flat[i] = old - h
        minus = loss()
        if restore:
            flat[i] = old
        grad.view(-1)[i] = {"central": (plus - minus) / (2 * h), "forward": (plus - base) / h,
                            "backward": (base - minus) / h, "over h": (plus - minus) / h,
                            "half": (plus - base) / (2 * h)}[how]
    return grad


def test_numeric_gradient_passes_the_reference(capsys):
    bn.check.numeric_gradient(differences)
    assert "✔ numeric_gradient: correct" in capsys.readouterr().out


def test_numeric_gradient_passes_the_package_and_a_multi_index_loop(capsys, monkeypatch):
    with monkeypatch.context() as m:  # the package's own, which a learner may not call
        m.setitem(bn.check.core.WRITE_YOUR_OWN, "numeric_gradient", ())
        bn.check.numeric_gradient(bn.testing.numeric_gradient)

    def by_index(f, x, dout, h):
        grad = torch.empty_like(x)
        for idx in itertools.product(*map(range, x.shape)):
            old = x[idx].item()
            x[idx] = old + h
            plus = float((f() * dout).sum())
            x[idx] = old - h
            minus = float((f() * dout).sum())
            x[idx] = old
            grad[idx] = (plus - minus) / (2 * h)
        return grad

    bn.check.numeric_gradient(by_index)
    assert capsys.readouterr().out.count("correct") == 2


@pytest.mark.parametrize("kw, message", [
    (dict(how="forward"), r"one-sided difference, \(f\(x \+ h\) - f\(x\)\) / h"),
    (dict(how="backward"), r"one-sided difference, \(f\(x\) - f\(x - h\)\) / h"),
    (dict(how="over h"), "divide by 2h"),
    (dict(how="half"), "the second point must be x - h"),
    (dict(restore=False), "x is left changed"),
    (dict(view_as_old=True), "that is a view that changes with x"),
])
def test_numeric_gradient_names_the_mistake(kw, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.numeric_gradient(lambda f, x, dout, h: differences(f, x, dout, h, **kw))


def all_at_once(f, x, dout, h):
    x += h
    plus = (f() * dout).sum()
    x -= 2 * h
    minus = (f() * dout).sum()
    x += h
    return torch.full_like(x, ((plus - minus) / (2 * h)).item())


def on_a_copy(f, x, dout, h):
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        for sign in (1, -1):
            t = x.clone()
            t.view(-1)[i] += sign * h  # f never sees t
            grad.view(-1)[i] += sign * (f() * dout).sum() / (2 * h)
    return grad


@pytest.mark.parametrize("fn, message", [
    (lambda f, x, dout, h: differences(f, x, dout), "ignores the argument h"),
    (lambda f, x, dout, h: differences(f, x, torch.ones_like(dout), h), r"differentiates sum\(f\(\)\)"),
    (all_at_once, "all of x moves at once"),
    (on_a_copy, "the gradient is zero"),
    (lambda f, x, dout, h: differences(f, x, dout, h).reshape(-1), "the gradient has the shape of x"),
    (lambda f, x, dout, h: None, "returned None"),
    (lambda f, x, dout, h: -differences(f, x, dout, h), "differs from the reference"),
])
def test_numeric_gradient_other_failures(fn, message):
    with pytest.raises(CheckFailed, match=message):
        bn.check.numeric_gradient(fn)

