"""Chapter 1's checks pass the reference, name each typical mistake, and flag unattempted work."""

import math

import pytest
import torch

from bncourse.teach import check
from bncourse.teach.check import CheckFailed


def grad_ok(w, b, x, y):
    r = x @ w + b - y
    return x.T @ r / len(y), r.mean()


def test_mse_gradient_passes_the_reference(capsys):
    check.mse_gradient(grad_ok)
    assert "✔ mse_gradient: correct" in capsys.readouterr().out


def _residual(w, b, x, y):
    return x @ w + b - y


@pytest.mark.parametrize("wrong, message", [
    (lambda w, b, x, y: tuple(-g for g in grad_ok(w, b, x, y)), "uphill"),
    (lambda w, b, x, y: (x.T @ _residual(w, b, x, y), _residual(w, b, x, y).sum()), "n times too large"),
    (lambda w, b, x, y: tuple(2 * g for g in grad_ok(w, b, x, y)), "twice too large"),
    (lambda w, b, x, y: (x.T @ (x @ w - y) / len(y), grad_ok(w, b, x, y)[1]), "leaves the bias out"),
    (lambda w, b, x, y: (x.mean(0) * _residual(w, b, x, y).mean(), grad_ok(w, b, x, y)[1]),
     "mean of the products"),
    (lambda w, b, x, y: (grad_ok(w, b, x, y)[0], torch.tensor(0.0)), "dw is right, but db: it is zero"),
    (lambda w, b, x, y: (grad_ok(w, b, x, y)[0], _residual(w, b, x, y).sum()),
     "dw is right, but db: it is n times too large"),
    (lambda w, b, x, y: (grad_ok(w, b, x, y)[0], 0.5 * grad_ok(w, b, x, y)[1]), "half the right size"),
    (lambda w, b, x, y: (grad_ok(w, b, x, y)[0], 3 * grad_ok(w, b, x, y)[1]), "db is wrong .*expected"),
    (lambda w, b, x, y: (grad_ok(w, b, x, y)[0] + 1, grad_ok(w, b, x, y)[1]), "dw is wrong"),
    (lambda w, b, x, y: grad_ok(w, b, x, y)[0], "return a pair"),
    (lambda w, b, x, y: (grad_ok(w, b, x, y)[0][:1], grad_ok(w, b, x, y)[1]), "expected a result of shape"),
    (lambda w, b, x, y: (None, None), "returned None"),
])
def test_mse_gradient_names_each_mistake(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.mse_gradient(wrong)


def _design(x):
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)


def _lam_max(m):
    return torch.linalg.eigvalsh(m)[-1].item()


def lr_ok(x):
    d = _design(x)
    return 2 / _lam_max(d.T @ d / len(x))


def test_largest_stable_lr_passes_the_reference(capsys):
    check.largest_stable_lr(lr_ok)
    check.largest_stable_lr(lambda x: torch.tensor(lr_ok(x)))  # a 0-dim tensor is fine too
    assert capsys.readouterr().out.count("✔ largest_stable_lr: correct") == 2


@pytest.mark.parametrize("wrong, message", [
    (lambda x: lr_ok(x) / 2, "half the limit"),
    (lambda x: 2 / torch.linalg.eigvalsh(_design(x).T @ _design(x) / len(x))[0].item(),
     "smallest eigenvalue"),
    (lambda x: 2 / lr_ok(x), "lambda_max itself"),
    (lambda x: 2 / _lam_max(x.T @ x / len(x)), "left out the bias"),
    (lambda x: 2 / _lam_max(_design(x).T @ _design(x)), "divide by n"),
    (lambda x: 2 / _lam_max(torch.atleast_2d(torch.cov(x.T, correction=0))),
     "covariance of x \\(centered\\)"),
    (lambda x: 2 / _lam_max(torch.atleast_2d(torch.cov(x.T))), "unbiased\\) covariance"),
    (lambda x: 2 / torch.linalg.svdvals(_design(x) / math.sqrt(len(x)))[0].item(),
     "singular value of D / sqrt"),
    (lambda x: 2 / torch.linalg.svdvals(_design(x))[0].item(), "largest singular value of D"),
    (lambda x: 1.234, "expected .* got 1.234"),
    (lambda x: None, "returned None"),
    (lambda x: [1.0, 2.0], "return one number"),
])
def test_largest_stable_lr_names_each_mistake(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.largest_stable_lr(wrong)


@pytest.mark.parametrize("name", ["mse_gradient", "largest_stable_lr"])
def test_not_attempted(name):
    def todo(*args):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="not attempted"):
        getattr(check, name)(todo)
