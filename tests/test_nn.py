"""bncourse.nn.BatchNorm1d/2d/3d as drop-ins for torch.nn.BatchNorm1d/2d/3d."""

import pytest
import torch

import bncourse as bn
from conftest import tolerances

PAIRS = {
    1: (bn.nn.BatchNorm1d, torch.nn.BatchNorm1d, [(8, 4), (6, 4, 5)]),
    2: (bn.nn.BatchNorm2d, torch.nn.BatchNorm2d, [(4, 4, 3, 5)]),
    3: (bn.nn.BatchNorm3d, torch.nn.BatchNorm3d, [(2, 4, 3, 2, 3)]),
}
CASES = [(ours, ref, shape) for ours, ref, shapes in PAIRS.values() for shape in shapes]
CASE_IDS = [f"{ours.__name__}-{len(shape)}D" for ours, _, shape in CASES]


def pair(ours_cls, torch_cls, dtype, device, **kw):
    ours = ours_cls(4, device=device, dtype=dtype, **kw)
    ref = torch_cls(4, device=device, dtype=dtype, **kw)
    if ours.affine:  # non-trivial parameters, the same in both
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            if ours.bias is not None:
                ours.bias.normal_()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def assert_same_state(ours, ref, tol):
    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    assert list(ours_state) == list(ref_state)
    for key in ours_state:
        torch.testing.assert_close(ours_state[key], ref_state[key], **tol, msg=key)


@pytest.mark.parametrize(("ours_cls", "torch_cls", "shape"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"momentum": None},
        {"momentum": 0.3, "eps": 1e-3},
        {"affine": False},
        {"bias": False},
        {"track_running_stats": False},
    ],
    ids=["default", "cumulative", "momentum0.3", "no-affine", "no-bias", "no-running-stats"],
)
def test_matches_torch_in_train_and_eval(ours_cls, torch_cls, shape, dtype, kw, device):
    ours, ref = pair(ours_cls, torch_cls, dtype, device, **kw)
    tol = tolerances(dtype)
    g = torch.Generator().manual_seed(1)
    for step in range(4):
        x = (torch.randn(shape, generator=g, dtype=dtype) * (step + 1) + step).to(device)
        dout = torch.randn(shape, generator=g, dtype=dtype).to(device)
        outs = []
        for layer in (ours, ref):
            xr = x.clone().requires_grad_()
            out = layer(xr)
            out.backward(dout)
            outs.append((out.detach(), xr.grad))
        for a, r in zip(*outs, strict=True):
            torch.testing.assert_close(a, r, **tol)
        if ours.affine:
            torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **tol)
            if ours.bias is not None:
                torch.testing.assert_close(ours.bias.grad, ref.bias.grad, **tol)
        assert_same_state(ours, ref, tol)
    ours.eval()
    ref.eval()
    x = torch.randn(shape, generator=g, dtype=dtype).to(device)
    torch.testing.assert_close(ours(x), ref(x), **tol)


@pytest.mark.parametrize(("ours_cls", "torch_cls", "shape"), CASES, ids=CASE_IDS)
def test_state_dicts_load_both_ways(ours_cls, torch_cls, shape):
    ours, ref = ours_cls(4), torch_cls(4)
    x = torch.randn(shape) * 2 + 1
    ref(x)  # running statistics and num_batches_tracked move away from their initial values
    ours.load_state_dict(ref.state_dict())
    assert int(ours.num_batches_tracked) == 1
    ours(x)
    ref.load_state_dict(ours.state_dict())
    assert int(ref.num_batches_tracked) == 2
    assert_same_state(ours, ref, tolerances(torch.float32))


def test_old_state_dict_without_num_batches_tracked_loads():
    ref = torch.nn.BatchNorm1d(3)
    state = ref.state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    ours = bn.nn.BatchNorm1d(3)
    ours.load_state_dict(state)
    assert int(ours.num_batches_tracked) == 0


@pytest.mark.parametrize(("ours_cls", "torch_cls", "shape"), CASES, ids=CASE_IDS)
def test_same_parameters_buffers_and_repr(ours_cls, torch_cls, shape):
    for kw in ({}, {"bias": False}, {"affine": False, "track_running_stats": False, "momentum": None}):
        ours, ref = ours_cls(4, **kw), torch_cls(4, **kw)
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
        assert [n for n, _ in ours.named_buffers()] == [n for n, _ in ref.named_buffers()]
        assert repr(ours) == repr(ref)


def test_dtype_and_device_arguments(device):
    layer = bn.nn.BatchNorm2d(3, device=device, dtype=torch.float64)
    for t in (layer.weight, layer.bias, layer.running_mean, layer.running_var):
        assert t.dtype == torch.float64 and t.device.type == device.type
    assert layer.num_batches_tracked.dtype == torch.long


def test_train_and_eval_follow_self_training_inside_a_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), bn.nn.BatchNorm1d(4), torch.nn.ReLU())
    x = torch.randn(16, 5)
    model(x)
    layer = model[1]
    stats = layer.running_mean.clone()
    model.eval()
    one = model(x[:1])  # one example is fine in eval mode, and does not touch the statistics
    torch.testing.assert_close(layer.running_mean, stats)
    torch.testing.assert_close(one, model(x)[:1])


@pytest.mark.parametrize(
    ("layer", "x", "match"),
    [
        (bn.nn.BatchNorm1d(3), torch.randn(2, 3, 4, 5), r"BatchNorm1d expected 2D or 3D input .*got 4D"),
        (bn.nn.BatchNorm2d(3), torch.randn(2, 3, 4), r"BatchNorm2d expected 4D input \(N, C, H, W\)"),
        (bn.nn.BatchNorm3d(3), torch.randn(2, 3, 4, 4), r"BatchNorm3d expected 5D input"),
        (bn.nn.BatchNorm1d(3), torch.randn(8, 4), r"BatchNorm1d\(3\) expected 3 channels in dim 1, got 4"),
        (bn.nn.BatchNorm2d(3), torch.randn(8, 5, 2, 2), r"expected 3 channels in dim 1, got 5"),
        (bn.nn.BatchNorm1d(3), torch.ones(8, 3, dtype=torch.int32), r"floating-point input.*torch.int32"),
        (bn.nn.BatchNorm1d(3), torch.randn(1, 3), r"more than 1 value per channel when training"),
        (bn.nn.BatchNorm2d(3), torch.randn(1, 3, 1, 1), r"more than 1 value per channel when training"),
    ],
)
def test_bad_input_raises_a_clear_error(layer, x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        layer(x)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_features must be a positive int, got 0"):
        bn.nn.BatchNorm1d(0)


def test_an_empty_batch_in_training_is_counted_but_leaves_the_statistics():
    layer = bn.nn.BatchNorm2d(3)
    out = layer(torch.randn(0, 3, 2, 2))
    assert out.shape == (0, 3, 2, 2) and int(layer.num_batches_tracked) == 1
    torch.testing.assert_close(layer.running_mean, torch.zeros(3))
