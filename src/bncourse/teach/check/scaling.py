"""Exercise checks of Chapter 2, feature scaling: a prediction of what dividing by the standard
deviation alone leaves (predict), and a deployed classifier that standardizes each request with its
own statistics (diagnose).

``standardize`` is on no page any more (standardizing is bookkeeping); the instructor tools' tests
build their synthetic exercises with it, so it stays.
"""

from __future__ import annotations

import math
import numbers

import torch

from ...lab.device import generator
from ...lab.scaling import fit_standard
from .core import CheckFailed, as_tensor, call, passed, say

__all__ = ["divided_by_std", "fixed_predict", "standardize"]

_TOL = {"rtol": 1e-5, "atol": 1e-6}


def _data(n: int, d: int, seed: int, constant: int | None = None) -> torch.Tensor:
    """Features with different scales and offsets; column ``constant`` (if given) is constant."""
    gen = generator(seed)
    scales = 10 ** torch.linspace(-1, 2, d, dtype=torch.float64)
    offsets = torch.linspace(-5, 40, d, dtype=torch.float64)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * scales + offsets
    if constant is not None:
        x[:, constant] = 3.0
    return x


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, **_TOL))


def _standardize_mistakes(x: torch.Tensor) -> list[tuple[torch.Tensor, str]]:
    """What the typical wrong answers return on ``x``, each with what to tell the learner."""
    mean, std = x.mean(0), x.std(0, unbiased=False)
    lo, hi = x.amin(0), x.amax(0)
    return [
        ((x - mean) / x.std(0), "you divided by the unbiased standard deviation (n - 1); "
                                "standardization as in StandardScaler uses the biased one: "
                                "x.std(0, unbiased=False)"),
        ((x - x.mean(1, keepdim=True)) / x.std(1, unbiased=False, keepdim=True),
         "you standardized each example (row); each feature (column) needs its own mean and "
         "standard deviation: reduce over dim 0"),
        ((x - x.mean()) / x.std(unbiased=False), "you used one mean and one standard deviation for "
                                                 "the whole matrix; each feature needs its own "
                                                 "(reduce over dim 0)"),
        ((x - x.mean()) / x.std(), "you used one mean and one standard deviation for the whole "
                                   "matrix; each feature needs its own (reduce over dim 0)"),
        (x - mean, "you subtracted the mean but did not divide by the standard deviation"),
        (x / std, "you divided by the standard deviation but did not subtract the mean"),
        ((x - mean) / std.pow(2), "you divided by the variance; divide by its square root, the "
                                  "standard deviation"),
        ((x - lo) / (hi - lo), "that is min-max scaling (onto [0, 1]); standardization subtracts "
                               "the mean and divides by the standard deviation"),
    ]


def _denominator_hint(x: torch.Tensor, z: torch.Tensor) -> str | None:
    """If ``z`` is ``x`` centered per column but divided by something else, say what it looks like."""
    xc = x - x.mean(0)
    if not torch.isfinite(z).all() or (z == 0).any():
        return None
    den = (xc / z).median(0).values  # per column, if z = xc / den
    if not _close(z, xc / den):
        return None
    std, var = x.std(0, unbiased=False), x.var(0, unbiased=False)
    eps_std, eps_var = den - std, den.pow(2) - var
    if (eps_std > 0).all() and torch.allclose(eps_std, eps_std[0].expand_as(eps_std), rtol=1e-4):
        return (f"you added {eps_std[0].item():.3g} to the standard deviation; standardization "
                f"divides by the standard deviation itself (only a zero one is replaced by 1)")
    if (eps_var > 0).all() and torch.allclose(eps_var, eps_var[0].expand_as(eps_var), rtol=1e-4):
        return (f"you divided by sqrt(var + {eps_var[0].item():.3g}), as batch normalization does; "
                f"here standardize exactly, dividing by the standard deviation (a zero one by 1)")
    return ("each column is centered correctly but divided by the wrong number: divide by its "
            "biased standard deviation, x.std(0, unbiased=False)")


def standardize(fn) -> None:
    """Check ``fn(x)``: each feature (column) minus its mean, over its biased standard deviation."""
    name = "standardize"
    cases = [(6, 3, 0, None), (40, 5, 1, None), (200, 2, 2, None), (30, 4, 3, 1)]
    for n, d, seed, constant in cases:
        x = _data(n, d, seed, constant)
        x_in = x.clone()
        ref = fit_standard(x)(x)
        z = as_tensor(call(fn, x_in, name=name), name, ref)
        if not torch.equal(x_in, x):
            raise CheckFailed(f"{name}: the function changed its input x in place; return a new "
                              f"tensor and leave x as it was")
        if _close(z, ref):
            continue
        if constant is not None:
            if not torch.isfinite(z).all():
                raise CheckFailed(f"{name}: a constant feature (column {constant}) gave NaN or inf: "
                                  f"its standard deviation is 0. Divide by 1 there instead (as "
                                  f"StandardScaler does), so the column becomes 0")
            if _close(z[:, constant], torch.zeros(n, dtype=z.dtype)):
                raise CheckFailed(f"{name}: the constant column is right, but the others are not "
                                  f"(x of shape {tuple(x.shape)})")
        for wrong, hint in _standardize_mistakes(x):
            if _close(z, wrong):
                raise CheckFailed(f"{name}: {hint} (x of shape {tuple(x.shape)})")
        hint = _denominator_hint(x, z)
        if hint is not None:
            raise CheckFailed(f"{name}: {hint} (x of shape {tuple(x.shape)})")
        raise CheckFailed(f"{name}: wrong result for x of shape {tuple(x.shape)}: each column of "
                          f"the output should have mean 0 and (biased) standard deviation 1; "
                          f"yours have means {z.mean(0).tolist()} and standard deviations "
                          f"{z.std(0, unbiased=False).tolist()}")
    passed(name, "as StandardScaler, 4 data sets, a constant column")


def _prediction(name: str, guess, measured: float, *, low: float, high: float, en: str, zh: str,
                fmt: str = ".3g") -> None:
    """A *predict* exercise's check, in the learner's language: it passes for any honest prediction
    in ``[low, high]``, and prints the gap to the run and why the run came out where it did."""
    if guess is None or isinstance(guess, bool) or not isinstance(guess, numbers.Real) \
            or math.isnan(guess):
        raise CheckFailed(say(
            en=f"{name}: expected your prediction as a number, got {guess!r}; commit to one before "
               f"you run the measurement",
            zh=f"{name}：请把你的预测写成一个数，得到的是 {guess!r}；先写下预测，再运行测量"))
    if not low <= guess <= high:
        raise CheckFailed(say(
            en=f"{name}: your prediction {guess:{fmt}} is outside [{low:{fmt}}, {high:{fmt}}], the range "
               f"this quantity can take here; reread the setup",
            zh=f"{name}：你的预测 {guess:{fmt}} 不在 [{low:{fmt}}, {high:{fmt}}] 之内，而这个量在这里只能落在"
               f"这个范围；请重读题设"))
    ratio = guess / measured
    if 0.8 <= ratio <= 1.25:
        how = say(en="within 25% of it", zh="相差不到 25%")
    else:
        factor = f"{max(ratio, 1 / ratio):.2g}"
        how = say(en=f"{factor} times {'above' if ratio > 1 else 'below'} it",
                  zh=f"是它的 {factor} 倍" if ratio > 1 else f"只有它的 1/{factor}")
    passed(name, say(en=f"you predicted {guess:{fmt}}, the run measured {measured:{fmt}}: {how}. {en}",
                     zh=f"你预测 {guess:{fmt}}，实测 {measured:{fmt}}：{how}。{zh}"))


def divided_by_std(guess, measured: float) -> None:
    """Check the prediction of the condition number of chapter 1's off-centre features (means 3 and
    50, standard deviations 1 and 10) once each is divided by its standard deviation."""
    _prediction("divided_by_std", guess, measured, low=1, high=1e7, fmt=".3g",
                en="Dividing by sigma leaves each feature's mean at mu/sigma (3 and 5 here) with unit "
                   "spread: the Hessian's largest eigenvalue is about its trace, 1 + 10 + 26 = 37, its "
                   "determinant is the product of the variances, 1, so the two small eigenvalues "
                   "multiply to about 1/37 and kappa is of order 37^2. The columns stay nearly "
                   "parallel to the bias's column of ones; only centring removes that.",
                zh="除以 sigma 之后，每个特征的均值变成 mu/sigma（这里是 3 和 5），方差为 1：海森矩阵的最大"
                   "特征值约等于它的迹 1 + 10 + 26 = 37，行列式等于各方差之积 1，所以两个小特征值之积约为 "
                   "1/37，kappa 的量级是 37^2。特征列仍几乎平行于偏置那一列全 1；只有中心化才能消除它。")


@torch.no_grad()
def _classes(model, x: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model.eval()(x.to(device)).argmax(1).cpu()


def _as_classes(value, n: int, name: str) -> torch.Tensor:
    if value is None:
        raise CheckFailed(say(en=f"{name}: the function returned None; did you forget `return`?",
                              zh=f"{name}：函数返回了 None；是不是忘了 `return`？"))
    t = torch.as_tensor(value).cpu()
    if t.shape != (n,):
        raise CheckFailed(say(
            en=f"{name}: a request of {n} images should give {n} classes, got shape {tuple(t.shape)}",
            zh=f"{name}：一个含 {n} 张图像的请求应返回 {n} 个类别，得到的形状是 {tuple(t.shape)}"))
    return t.long()


def _serve(fn, request: torch.Tensor, name: str):
    """The learner's classes for one request; an error of their code becomes a failure that says
    which request raised it."""
    try:
        return call(fn, request.clone(), name=name)
    except CheckFailed:
        raise
    except Exception as e:
        raise CheckFailed(say(
            en=f"{name}: the function raised {type(e).__name__}: {e} (on a request of {len(request)} "
               f"image(s))",
            zh=f"{name}：函数抛出了 {type(e).__name__}：{e}（请求中有 {len(request)} 张图像）")) from e


def fixed_predict(fn, model, split) -> None:
    """Check ``fn(images) -> classes``: the classes ``model`` (trained on pixels standardized with the
    training split's statistics) predicts for a request of raw images, the same whether an image
    comes alone, in a small request or with the whole test split."""
    name = "fixed_predict"
    x_train, x_test = split.x_train.cpu(), split.x_test.cpu()
    right = _classes(model, fit_standard(x_train)(x_test))
    sizes = (len(x_test), 7, 1)
    got = {}
    for size in sizes:
        requests = x_test.split(size) if size > 1 else x_test[:40].split(1)
        got[size] = torch.cat([_as_classes(_serve(fn, r, name), len(r), name) for r in requests])
    ok = {size: int((got[size] != right[:len(got[size])]).sum()) <= 1 for size in sizes}  # rounding
    if all(ok.values()):
        passed(name, say(en="the same classes alone, in requests of 7 and all at once, as with the "
                            "training statistics",
                         zh="单张、7 张一组、整批请求给出的类别都相同，与用训练统计量时一致"))
        return
    own = {size: torch.cat([_classes(model, fit_standard(r)(r) if len(r) > 1 else torch.zeros_like(r))
                            for r in (x_test.split(size) if size > 1 else x_test[:40].split(1))])
           for size in sizes}
    leaked = _classes(model, fit_standard(torch.cat([x_train, x_test]))(x_test))
    raw = _classes(model, x_test)
    if all(torch.equal(got[size], own[size]) for size in sizes) or got[1].unique().numel() == 1:
        raise CheckFailed(say(
            en=f"{name}: each request is still standardized with its own statistics: the classes "
               f"depend on the other images of the request, and a request of one image becomes all "
               f"zeros (every pixel equals its own mean), so every single image gets class "
               f"{got[1][0].item()}. Standardize with the training split's mean and standard "
               f"deviation, fitted once",
            zh=f"{name}：每个请求仍然用它自己的统计量标准化：类别取决于同一请求里的其他图像，而只有一张"
               f"图像的请求会变成全 0（每个像素都等于它自己的均值），于是每张单独的图像都被判为类别 "
               f"{got[1][0].item()}。请用训练集的均值和标准差标准化，只拟合一次"))
    if torch.equal(got[len(x_test)], leaked):
        raise CheckFailed(say(
            en=f"{name}: the statistics were fitted on the training and test images together; the "
               f"model was trained with those of the training split alone, and the test split must "
               f"not shape its own preprocessing",
            zh=f"{name}：统计量是在训练和测试图像上一起拟合的；模型训练时只用了训练集的统计量，"
               f"而且测试集不应参与它自己的预处理"))
    if torch.equal(got[len(x_test)], raw):
        raise CheckFailed(say(
            en=f"{name}: these are the classes of the raw pixels; the model was trained on standardized "
               f"ones, so standardize each request with the training statistics first",
            zh=f"{name}：这是原始像素得到的类别；模型是在标准化后的像素上训练的，"
               f"所以请先用训练统计量标准化每个请求"))
    wrong = ", ".join(f"{size}" for size in sizes if not ok[size])
    raise CheckFailed(say(
        en=f"{name}: for requests of {wrong} image(s) the classes differ from those of the test images "
           f"standardized with the training split's statistics",
        zh=f"{name}：请求大小为 {wrong} 时，得到的类别与用训练集统计量标准化测试图像所得的类别不同"))
