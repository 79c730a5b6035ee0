"""The machinery every check shares: "write your own" while the learner's function runs."""

import sys

import pytest
import torch
from torch.nn.functional import batch_norm as imported_early

import bncourse as bn
from bncourse.teach.check import core


def own_forward(x, gamma, beta, eps):
    dims, shape = (0, *range(2, x.dim())), (1, -1) + (1,) * (x.dim() - 2)
    mean, var = x.mean(dims, keepdim=True), x.var(dims, correction=0, keepdim=True)
    return gamma.reshape(shape) * (x - mean) / torch.sqrt(var + eps) + beta.reshape(shape)


def swallowed(x, g, b, e):
    try:
        return torch.nn.functional.batch_norm(x, None, None, g, b, True, 0.1, e)
    except Exception:
        return own_forward(x, g, b, e)


ROUTES = {  # each called as fn(x, gamma, beta, eps), as the check does
    "torch.nn.functional.batch_norm": lambda x, g, b, e: torch.nn.functional.batch_norm(
        x, None, None, g, b, True, 0.1, e),
    "imported before the check": lambda x, g, b, e: imported_early(x, None, None, g, b, True, 0.1, e),
    "torch.batch_norm": lambda x, g, b, e: torch.batch_norm(x, None, None, g, b, True, 0.1, e, False),
    "torch.ops.aten": lambda x, g, b, e: torch.ops.aten.native_batch_norm(
        x, g, b, None, None, True, 0.1, e)[0],
    "torch.nn.BatchNorm2d": lambda x, g, b, e: torch.nn.BatchNorm2d(x.shape[1], eps=e).double()(x),
    "bn.functional": lambda x, g, b, e: bn.functional.batch_norm_forward(x, g, b, e)[0],
    "bn.tuned": lambda x, g, b, e: bn.tuned.batch_norm_forward(x, g, b, e)[0],
    "bn.nn": lambda x, g, b, e: bn.nn.BatchNorm2d(x.shape[1], eps=e).double()(x),
    "caught in a try/except": swallowed,
}


@pytest.mark.parametrize("route", ROUTES.values(), ids=ROUTES.keys())
def test_bn_forward_refuses_the_kernels_it_asks_for(route):
    with pytest.raises(core.CheckFailed, match="bn_forward: write your own: your function calls"):
        bn.check.bn_forward(route)
    assert sys.getprofile() is None


def test_an_exercise_that_allows_the_kernels_is_not_guarded(capsys):
    def grad_at_scaled_weight(x, w, k, dout):  # the chapter's solution calls bn.functional
        v = (k * w).detach().requires_grad_()
        out = bn.functional.batch_norm(x @ v.T, None, None, training=True, eps=1e-5)
        (out * dout).sum().backward()
        return v.grad

    bn.check.grad_at_scaled_weight(grad_at_scaled_weight)
    assert "✔ grad_at_scaled_weight: correct" in capsys.readouterr().out


def test_the_guard_restores_a_profiler_already_set():
    def profiler(frame, event, arg):
        return None

    sys.setprofile(profiler)
    try:
        with pytest.raises(core.CheckFailed, match="write your own"):
            bn.check.bn_forward(ROUTES["bn.functional"])
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)


def test_every_write_your_own_entry_names_a_check_and_resolves():
    assert set(core.WRITE_YOUR_OWN) <= set(dir(bn.check))
    for names in core.WRITE_YOUR_OWN.values():
        files, codes, builtins = core._forbidden(names)
        assert len(files) + len(codes) + len(builtins) == len(set(names))


def test_a_prediction_passes_when_made_and_says_how_far_it_was(capsys):
    core.prediction("p", 0.4, 0.5, low=0, high=1, explain="Because.")
    assert "you predicted 0.4, the run measured 0.5: below the run by 0.1. Because." in \
        capsys.readouterr().out
    core.prediction("p", 0.52, 0.5, low=0, high=1, explain="")
    assert "spot on" in capsys.readouterr().out
    for bad in (None, "0.4", float("nan"), True):
        with pytest.raises(core.CheckFailed, match="expected your prediction as a number"):
            core.prediction("p", bad, 0.5, low=0, high=1, explain="")
    with pytest.raises(core.CheckFailed, match="outside"):
        core.prediction("p", 3.0, 0.5, low=0, high=1, explain="")


def test_checks_speak_the_learners_language(monkeypatch, capsys):
    core.passed("f", "detail")
    assert capsys.readouterr().out == "✔ f: correct (detail)\n"
    monkeypatch.setenv("BNCOURSE_LANG", "zh_CN")
    core.passed("f", "细节")
    assert capsys.readouterr().out == "✔ f：正确（细节）\n"
    assert core.say("right", "对") == "对"
    monkeypatch.setenv("BNCOURSE_LANG", "fr")
    with pytest.raises(ValueError, match="BNCOURSE_LANG must be"):
        core.say("a", "b")


def test_the_shared_messages_speak_chinese(monkeypatch, capsys):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")

    def stub(*args):
        raise NotImplementedError

    with pytest.raises(core.CheckFailed, match="尚未作答"):
        core.call(stub, name="f")
    with pytest.raises(core.CheckFailed, match="函数抛出了 ZeroDivisionError"):
        core.run(lambda: 1 / 0, name="f", what="m = 3")
    with pytest.raises(core.CheckFailed, match="是不是忘了 `return`"):
        core.as_tensor(None, "f", torch.zeros(2))
    with pytest.raises(core.CheckFailed, match="结果的形状应为"):
        core.as_tensor(torch.zeros(3), "f", torch.zeros(2))
    with pytest.raises(core.CheckFailed, match="请自己动手写"):
        core.call(lambda x: torch.nn.functional.batch_norm(x, None, None, training=True),
                  torch.randn(4, 3), name="bn_forward")
    with pytest.raises(core.CheckFailed, match="你的预测应是一个数"):
        core.prediction("p", None, 0.5, low=0, high=1, explain="")
    with pytest.raises(core.CheckFailed, match="不在 \\[0, 1\\] 内"):
        core.prediction("p", 3.0, 0.5, low=0, high=1, explain="")
    core.prediction("p", 0.4, 0.5, low=0, high=1, explain="因为。")
    assert "你预测 0.4，实测为 0.5：比实测低 0.1。因为。" in capsys.readouterr().out
