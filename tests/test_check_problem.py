"""Chapter 1's checks pass the reference, name each typical mistake in both languages, refuse the
shortcuts the exercises rule out, and flag unattempted work."""

import math

import numpy as np
import pytest
import torch

from bncourse.teach import check
from bncourse.teach.check import CheckFailed


def lr_ok(mu, sigma):
    t = 1 + mu * mu + sigma * sigma  # trace; the determinant is sigma^2
    return 4 / (t + math.sqrt(t * t - 4 * sigma * sigma))


def test_largest_stable_lr_passes_the_reference(capsys):
    check.largest_stable_lr(lr_ok)
    check.largest_stable_lr(lambda mu, sigma: torch.tensor(lr_ok(mu, sigma)))  # a 0-dim tensor too
    assert capsys.readouterr().out.count("✔ largest_stable_lr: correct") == 2


@pytest.mark.parametrize("wrong, message", [
    (lambda mu, sigma: lr_ok(mu, sigma) / 2, "half the limit"),
    (lambda mu, sigma: 4 / (lr_ok(mu, sigma) * sigma * sigma),
     "smaller eigenvalue"),  # 2 / lambda_min, with lambda_min = det / lambda_max = sigma^2 / lambda_max
    (lambda mu, sigma: 2 / (mu * mu + sigma * sigma), "diagonal entry"),
    (lambda mu, sigma: 2 / max(mu * mu + sigma * sigma, 1), "diagonal entry"),
    (lambda mu, sigma: 2 / (sigma * sigma), "limit of a centred feature"),
    (lambda mu, sigma: 2 / max(sigma * sigma, 1), "limit of a centred feature"),
    (lambda mu, sigma: 2 / (1 + mu * mu + sigma * sigma), "the trace"),
    (lambda mu, sigma: 2 / torch.linalg.eigvalsh(torch.tensor([[sigma * sigma, mu], [mu, 1.0]],
                                                               dtype=torch.float64))[-1].item(),
     "write your own"),  # an eigenvalue routine is what the exercise rules out
    (lambda mu, sigma: 2 / np.linalg.eigvalsh(np.array([[mu * mu + sigma * sigma, mu], [mu, 1.0]]))[-1],
     "write your own"),
    (lambda mu, sigma: 1.234, "expected .* got 1.234"),
    (lambda mu, sigma: None, "returned None"),
    (lambda mu, sigma: [1.0, 2.0], "return one number"),
])
def test_largest_stable_lr_names_each_mistake(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.largest_stable_lr(wrong)


def test_the_variance_in_place_of_the_second_moment_is_named():
    def covariance(mu, sigma):
        t, det = 1 + sigma * sigma, sigma * sigma - mu * mu  # [[sigma^2, mu], [mu, 1]]
        return 4 / (t + math.sqrt(t * t - 4 * det))

    with pytest.raises(CheckFailed, match="variance sigma\\^2 where the Hessian has the mean of x\\^2"):
        check.largest_stable_lr(covariance)


def descend(x, y, lr, steps=200):
    w, b = torch.zeros(x.shape[1], dtype=x.dtype), torch.zeros((), dtype=x.dtype)
    for _ in range(steps):
        r = x @ w + b - y
        w, b = w - lr * x.T @ r / len(y), b - lr * r.mean()
    return w, b


def fit_ok(x, y):
    mean, std = x.mean(0), x.std(0, correction=0)
    w, b = descend((x - mean) / std, y, 0.5)
    return w / std, b - mean @ (w / std)


def fit_scaled_only(x, y):  # no centring: the means are small beside the scales, so it converges
    std = x.std(0, correction=0)
    w, b = descend(x / std, y, 0.5)
    return w / std, b


def test_fixed_fit_passes_the_reference(capsys):
    check.fixed_fit(fit_ok)
    check.fixed_fit(fit_scaled_only)
    assert capsys.readouterr().out.count("✔ fixed_fit: correct") == 2


def _lowered_rate(x, y):
    d = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    lam_max = (d.T @ d / len(x)).diagonal().sum().item()  # the trace bounds lambda_max
    return descend(x, y, 1.9 / lam_max)


def _not_mapped_back(x, y):
    mean, std = x.mean(0), x.std(0, correction=0)
    return descend((x - mean) / std, y, 0.5)


@pytest.mark.parametrize("wrong, message", [
    (lambda x, y: descend(x, y, 0.5), "still diverges"),
    (_lowered_rate, "no longer diverges, but after 200 steps .* remains"),
    (_not_mapped_back, "rescaled features, not the original ones"),
    (lambda x, y: (fit_ok(x, y)[0], fit_ok(x, y)[1] + 1), "the fit is finite but its loss"),
    (lambda x, y: (x.new_zeros(x.shape[1]), torch.tensor(0.0)), "no longer diverges"),
    (lambda x, y: fit_ok(x, y)[0], "return the pair"),
    (lambda x, y: (fit_ok(x, y)[0][:1], fit_ok(x, y)[1]), "expected w of shape"),
    (lambda x, y: (None, None), "is None"),
    (lambda x, y: tuple(torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1),
                                           y[:, None]).solution[:, 0].split([x.shape[1], 1])),
     "write your own"),  # solving in closed form skips the descent
])
def test_fixed_fit_names_each_mistake(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.fixed_fit(wrong)


@pytest.mark.parametrize("name, args", [("largest_stable_lr", 2), ("fixed_fit", 2)])
def test_not_attempted(name, args):
    def todo(*args):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="not attempted"):
        getattr(check, name)(todo)


def test_the_messages_speak_chinese(monkeypatch, capsys):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    check.largest_stable_lr(lr_ok)
    check.fixed_fit(fit_ok)
    assert capsys.readouterr().out.count("正确") == 2
    with pytest.raises(CheckFailed, match="非对角元 mu"):
        check.largest_stable_lr(lambda mu, sigma: 2 / max(mu * mu + sigma * sigma, 1))
    with pytest.raises(CheckFailed, match="仍然发散"):
        check.fixed_fit(lambda x, y: descend(x, y, 0.5))
    with pytest.raises(CheckFailed, match="缩放后的特征"):
        check.fixed_fit(_not_mapped_back)
