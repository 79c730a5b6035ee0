"""Chapter 7's exercise checks: a right answer passes, each typical mistake is named, in both
languages."""

import copy
import io
from contextlib import redirect_stdout
from types import SimpleNamespace

import pytest
import torch

import bncourse as bn
from bncourse.teach.check import CheckFailed
from bncourse.teach.check.hardware import _export_net


class FakeTiming(SimpleNamespace):
    def share(self, name, mode):
        return {"train fwd+bwd": 0.05, "eval": 0.4}[name]


TIMING = FakeTiming(seconds={"train fwd+bwd": 0.020, "eval": 0.001})


def test_train_eval_ratio_passes_any_honest_prediction(capsys):
    for guess in (2.5, 20, 300):
        bn.check.train_eval_ratio(guess, TIMING)
        out = capsys.readouterr().out
        assert "train_eval_ratio: correct" in out and "measured 20" in out.replace("\n  ", " ")
    out = out.replace("\n  ", " ")
    assert "only 5%" in out and "times above" in out
    bn.check.train_eval_ratio(2.5, TIMING)
    assert "2.5" in capsys.readouterr().out


@pytest.mark.parametrize("guess", [None, "10", float("nan"), True, 0.5, 1e6])
def test_train_eval_ratio_refuses_no_prediction(guess):
    with pytest.raises(CheckFailed, match="train_eval_ratio"):
        bn.check.train_eval_ratio(guess, TIMING)


def test_train_eval_ratio_speaks_chinese(monkeypatch, capsys):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    bn.check.train_eval_ratio(20, TIMING)
    assert "测得" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="预测"):
        bn.check.train_eval_ratio(None, TIMING)


def fold_next(batch_norm, linear):
    scale = torch.rsqrt(batch_norm.running_var + batch_norm.eps)
    if batch_norm.weight is not None:
        scale = scale * batch_norm.weight
    shift = -scale * batch_norm.running_mean
    if batch_norm.bias is not None:
        shift = shift + batch_norm.bias
    folded = copy.deepcopy(linear)
    with torch.no_grad():
        folded.weight.mul_(scale[None, :])
        folded.bias.add_(linear.weight @ shift)
    return folded


def test_fold_into_next_passes_and_names_mistakes(capsys):
    bn.check.fold_into_next(fold_next)
    assert "fold_into_next: correct" in capsys.readouterr().out

    def rows(batch_norm, linear):
        folded = fold_next(batch_norm, linear)
        scale = torch.rsqrt(batch_norm.running_var + batch_norm.eps) * batch_norm.weight
        with torch.no_grad():
            folded.weight.copy_(linear.weight * scale[:, None])
        return folded

    def no_shift(batch_norm, linear):
        folded = fold_next(batch_norm, linear)
        with torch.no_grad():
            folded.bias.copy_(linear.bias)
        return folded

    def no_eps(batch_norm, linear):
        eps, batch_norm.eps = batch_norm.eps, 0.0
        try:
            return fold_next(batch_norm, linear)
        finally:
            batch_norm.eps = eps

    def in_place(batch_norm, linear):
        with torch.no_grad():
            linear.weight.mul_(1.0 + 1e-3)
        return fold_next(batch_norm, linear)

    for wrong, message in ((rows, "column k of W"), (no_shift, "b' = b \\+ W t"),
                           (no_eps, "eps is missing"), (in_place, "original layers were changed"),
                           (lambda norm, lin: None, "expected an nn.Linear")):
        with pytest.raises(CheckFailed, match=message):
            bn.check.fold_into_next(wrong)


def test_fold_into_next_speaks_chinese(monkeypatch):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed, match="漏了 eps"):
        bn.check.fold_into_next(lambda norm, lin: fold_next(
            type("N", (), {"running_var": norm.running_var, "eps": 0.0, "weight": norm.weight,
                           "bias": norm.bias, "running_mean": norm.running_mean})(), lin))


def reference_of(model, images):
    with torch.no_grad():
        return model(images)


def fixed(model, images):
    model.eval()
    reference = reference_of(model, images)
    folded = bn.fold.fold_model(model)
    return folded, (reference_of(folded, images) - reference).abs().max().item()


def buggy(model, images):  # the page's script
    reference = reference_of(model, images)
    folded = bn.fold.fold_model(model)
    return folded, (reference_of(folded, images) - reference).abs().max().item()


def test_fixed_export_passes_and_names_mistakes(capsys):
    bn.check.fixed_export(fixed)
    assert "fixed_export: correct" in capsys.readouterr().out

    def eval_too_late(model, images):
        reference = reference_of(model, images)
        model.eval()
        folded = bn.fold.fold_model(model)
        return folded, (reference_of(folded, images) - reference).abs().max().item()

    def reference_in_train_mode(model, images):
        reference = reference_of(copy.deepcopy(model), images)
        folded = bn.fold.fold_model(model)
        return folded, (reference_of(folded, images) - reference).abs().max().item()

    def unfolded(model, images):
        model.eval()
        return model, 0.0

    for wrong, message in ((buggy, "running statistics changed"),
                           (eval_too_late, "running statistics changed"),
                           (reference_in_train_mode, "script's own error"),
                           (unfolded, "still has batch norm"),
                           (lambda m, x: bn.fold.fold_model(m), "pair")):
        with pytest.raises(CheckFailed, match=message):
            bn.check.fixed_export(wrong)


def test_fixed_export_speaks_chinese(monkeypatch):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    with pytest.raises(CheckFailed, match="评估模式"):
        bn.check.fixed_export(buggy)


def test_the_buggy_script_shows_its_symptom():
    net = _export_net(0)
    images = torch.randn(16, 20, generator=bn.generator(1))
    with redirect_stdout(io.StringIO()):
        _, error = buggy(net, images)
    assert error > 0.05


def test_train_eval_ratio_explains_a_ratio_near_the_bytes(capsys):
    timing = FakeTiming(seconds={"train fwd+bwd": 0.0032, "eval": 0.001})
    timing.share = lambda name, mode: {"train fwd+bwd": 0.025, "eval": 0.03}[name]
    bn.check.train_eval_ratio(3.0, timing)
    out = capsys.readouterr().out.replace("\n  ", " ")
    assert "within 10%" in out and "near that of the bytes" in out


def test_the_other_predictions_pass_honest_numbers_and_print_short_lines(capsys):
    sums = SimpleNamespace(seconds={"x.sum(0)": 0.001, "torch.var_mean(x, 0)": 0.05})
    sums_c = SimpleNamespace(seconds={"compiled x.sum(0)": 0.004, "compiled two-stage": 0.001})
    for check, arg, guess in ((bn.check.var_mean_ratio, sums, 2), (bn.check.two_stage_share, sums_c, 0.5),
                              (bn.check.peak_tensors, {"PyTorch": 2.4}, 2)):
        check(guess, arg)
        out = capsys.readouterr().out
        assert "correct" in out and max(len(line) for line in out.splitlines()) <= 88
        with pytest.raises(CheckFailed, match="expected your prediction"):
            check(None, arg)
        with pytest.raises(CheckFailed, match="outside"):
            check(-1, arg)


def test_chinese_predictions_print_short_lines(monkeypatch, capsys):
    monkeypatch.setenv("BNCOURSE_LANG", "zh")
    bn.check.peak_tensors(2, {"PyTorch": 2.4})
    out = capsys.readouterr().out
    assert "测得" in out and max(len(line) for line in out.splitlines()) <= 44
