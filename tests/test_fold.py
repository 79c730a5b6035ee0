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


class BasicBlock(nn.Module):
    """torchvision's ResNet block, its layers named as torchvision names them: conv1/bn1, not a
    Sequential, and a shortcut that adds the block's input."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = bn.nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, stride=2))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer1(self.bn1(self.conv1(x)).relu())
        return self.fc(x.mean((2, 3)))


def test_torchvision_style_attributes_fold_too():
    model = trained(TinyResNet().double(), (4, 3, 8, 8))
    folded = bn.fold.fold_model(model)
    assert [m for m in folded.modules() if isinstance(m, bn.fold.BATCH_NORMS)] == []
    assert sum(isinstance(m, bn.fold.BATCH_NORMS) for m in model.modules()) == 6  # model kept
    assert folded.get_submodule("layer1.1.conv2").bias is not None  # it took bn2's shift
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-12, atol=1e-12)
    assert not folded.training and model.training is False


class Shared(nn.Module):
    """Pairs that must not fold: a layer whose output also goes elsewhere, a layer called twice."""

    def __init__(self):
        super().__init__()
        self.used_twice, self.bn_a = nn.Linear(4, 4), nn.BatchNorm1d(4)
        self.called_twice, self.bn_b = nn.Linear(4, 4), nn.BatchNorm1d(4)
        self.plain, self.bn_c = nn.Linear(4, 4), nn.BatchNorm1d(4)

    def forward(self, x):
        z = self.used_twice(x)
        y = self.bn_a(z) + z
        y = self.bn_b(self.called_twice(y)) + self.called_twice(x)
        return self.bn_c(self.plain(y))


def test_a_layer_whose_output_is_used_elsewhere_is_not_folded():
    model = trained(Shared().double(), (16, 4))
    folded = bn.fold.fold_model(model)
    kept = {name for name, m in folded.named_modules() if isinstance(m, bn.fold.BATCH_NORMS)}
    assert kept == {"bn_a", "bn_b"}
    x = torch.randn(16, 4, dtype=torch.float64)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-12, atol=1e-12)


class Branchy(nn.Module):
    """Control flow on the data: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)
        self.head_bn = nn.BatchNorm1d(2)

    def forward(self, x):
        x = self.body(x)
        if x.sum() > 0:
            x = -x
        return self.head_bn(self.head(x))


def test_untraceable_models_fold_their_sequentials_and_say_so():
    model = trained(Branchy().double(), (16, 3))
    with pytest.warns(RuntimeWarning, match="cannot trace Branchy.*neighbours inside nn.Sequential"):
        folded = bn.fold.fold_model(model)
    assert isinstance(folded.body[1], nn.Identity) and isinstance(folded.head_bn, nn.BatchNorm1d)
    x = torch.randn(16, 3, dtype=torch.float64)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-12, atol=1e-12)
