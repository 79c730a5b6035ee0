"""Folding batch norm into the Linear or Conv before it: the same function, to float64 precision."""

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

import bncourse as bn


def trained(model, shape, seed=0):
    """The model after a few training steps, so its running statistics are not the initial ones."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        for _ in range(3):
            model(torch.randn(shape, generator=g, dtype=next(model.parameters()).dtype) * 2 + 1)
    return model.eval()


CASES = [
    (lambda: nn.Sequential(nn.Linear(5, 4), bn.nn.BatchNorm1d(4)), (16, 5)),
    (lambda: nn.Sequential(nn.Linear(5, 4, bias=False), nn.BatchNorm1d(4, affine=False)), (16, 5)),
    (lambda: nn.Sequential(nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4)), (8, 3, 7)),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, groups=1), bn.nn.BatchNorm2d(4), nn.ReLU(),
                           nn.Sequential(nn.Conv2d(4, 4, 3, groups=2, bias=False), nn.BatchNorm2d(4))),
     (4, 3, 8, 8)),
    (lambda: nn.Sequential(nn.Conv3d(2, 3, 2), bn.nn.BatchNorm3d(3, bias=False)), (2, 2, 4, 4, 4)),
]


@pytest.mark.parametrize(("make", "shape"), CASES)
def test_folded_model_computes_the_same_function_in_float64(make, shape):
    model = trained(make().double(), shape)
    folded = bn.fold.fold_model(model)
    norms = [m for m in folded.modules() if isinstance(m, bn.fold.BATCH_NORMS)]
    assert norms == [] and model[1].__class__.__name__.startswith("BatchNorm")  # the original is kept
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-12, atol=1e-12)


def test_float32_fold_is_as_close_as_pytorchs():
    model = trained(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), (4, 3, 8, 8))
    x = torch.randn(4, 3, 8, 8)
    exact = model.double()(x.double())
    model.float()
    ours = bn.fold.fold_model(model)(x)
    torchs = fuse_conv_bn_eval(model[0], model[1])(x)
    err = (ours.double() - exact).abs().max()
    assert err <= 1.5 * (torchs.double() - exact).abs().max() + 1e-6


def test_fold_batch_norm_matches_pytorchs_fusion_for_linear():
    lin, norm = trained(nn.Sequential(nn.Linear(6, 3), nn.BatchNorm1d(3)).double(), (10, 6))
    ours, torchs = bn.fold.fold_batch_norm(lin, norm), fuse_linear_bn_eval(lin, norm)
    torch.testing.assert_close(ours.weight, torchs.weight)
    torch.testing.assert_close(ours.bias, torchs.bias)


def test_bad_pairs_raise_clear_errors():
    with pytest.raises(TypeError, match="expected a Linear or Conv1d/2d/3d layer.*got ReLU"):
        bn.fold.fold_batch_norm(nn.ReLU(), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="running statistics"):
        bn.fold.fold_batch_norm(nn.Linear(2, 3), nn.BatchNorm1d(3, track_running_stats=False))
    with pytest.raises(ValueError, match=r"3 output channels, got BatchNorm1d\(4\)"):
        bn.fold.fold_batch_norm(nn.Linear(2, 3), nn.BatchNorm1d(4))
