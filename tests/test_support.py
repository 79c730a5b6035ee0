"""The support modules: device, data, models, train, testing."""

import pytest
import torch

import bncourse as bn


def test_default_device_honours_the_environment(monkeypatch):
    monkeypatch.setenv("BNCOURSE_DEVICE", "cpu")
    assert bn.default_device() == torch.device("cpu")
    monkeypatch.setenv("BNCOURSE_DEVICE", "tpu")
    with pytest.raises(ValueError, match="BNCOURSE_DEVICE must be one of cpu, cuda, mps.*'tpu'"):
        bn.default_device()
    monkeypatch.delenv("BNCOURSE_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else None
    if expected:
        assert bn.default_device().type == expected
    assert bn.available_devices()[0] == torch.device("cpu")


def test_seed_everything_makes_runs_repeat():
    bn.seed_everything(3)
    a = torch.randn(4)
    g = bn.seed_everything(3)
    assert torch.equal(a, torch.randn(4))
    assert torch.equal(torch.randn(2, generator=g), torch.randn(2, generator=bn.seed_everything(3)))
    with pytest.raises(ValueError, match="non-negative int"):
        bn.seed_everything(-1)


def test_digits_split_is_stratified_and_offline():
    data = bn.data.digits(test_fraction=0.25, seed=0)
    assert data.x_train.shape == (1347, 64) and data.x_test.shape == (450, 64)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.long
    assert data.num_classes == 10 and data.num_features == 64
    assert 0 <= data.x_train.min() and data.x_train.max() <= 16
    assert torch.bincount(data.y_test).min() >= 43  # every class is represented
    assert torch.equal(bn.data.digits(seed=0).x_test, data.x_test)
    with pytest.raises(ValueError, match="test_fraction"):
        bn.data.digits(test_fraction=1.5)


def test_batches_cover_the_data_once_per_epoch():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    seen = [yb for _, yb in bn.data.batches(x, y, 3, torch.Generator().manual_seed(0))]
    assert [len(b) for b in seen] == [3, 3, 3]  # the short last batch is dropped
    assert len(set(torch.cat(seen).tolist())) == 9
    kept = list(bn.data.batches(x, y, 3, shuffle=False, drop_last=False))
    assert torch.equal(torch.cat([b for _, b in kept]), y)


def test_mlp_layout():
    plain = bn.models.mlp([4, 8, 8, 3], activation="sigmoid")
    assert [type(m).__name__ for m in plain] == ["Linear", "Sigmoid", "Linear", "Sigmoid", "Linear"]
    normed = bn.models.mlp([4, 8, 3], activation="relu", norm="bn")
    assert [type(m).__name__ for m in normed] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert normed[0].bias is None and isinstance(normed[1], bn.nn.BatchNorm1d)
    with pytest.raises(ValueError, match="activation must be one of"):
        bn.models.mlp([4, 3], activation="gelu")
    with pytest.raises(ValueError, match="norm must be None or one of"):
        bn.models.mlp([4, 3], norm="batch")


def test_scale_weights_scales_every_linear_weight():
    model = bn.models.mlp([4, 8, 3])
    before = [m.weight.clone() for m in model if isinstance(m, torch.nn.Linear)]
    bn.models.scale_weights(model, 10.0)
    after = [m.weight for m in model if isinstance(m, torch.nn.Linear)]
    for b, a in zip(before, after, strict=True):
        torch.testing.assert_close(a, 10 * b)


def test_train_learns_digits_and_records_history():
    bn.seed_everything(0)
    data = bn.data.digits(seed=0)
    data.x_train, data.x_test = data.x_train / 16, data.x_test / 16
    model = bn.models.mlp([64, 32, 10], norm="bn")
    runs = bn.train([model], data, 120, 0.5, batch_size=32, eval_every=40, progress=False)
    assert runs.step_loss.shape == (1, 120) and runs.eval_step == [0, 40, 80, 120]
    assert runs.test_acc[0, -1] > 0.85 > runs.test_acc[0, 0]
    assert runs.steps_to(0.85)[0] in (40, 80, 120) and runs.steps_to(1.01) == [None]
    assert not runs.diverged.any() and model.training


def test_train_flags_a_diverged_member():
    data = bn.data.digits(seed=0)  # raw pixels 0..16, a deep linear network, a large learning rate
    runs = bn.train(lambda: bn.models.mlp([64, 64, 64, 10], activation="identity"), data, 200,
                    [1.0, 1e-4], seeds=[0, 0], progress=False)
    assert runs.diverged.tolist() == [True, False]
    assert torch.isnan(runs.step_loss[0, -1]) and torch.isfinite(runs.step_loss[1]).all()


def test_rel_error_and_numeric_gradient():
    assert bn.rel_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == 0
    assert bn.rel_error(torch.tensor([1.0]), torch.tensor([1.1])) == pytest.approx(0.1 / 1.1)
    with pytest.raises(ValueError, match="same shape"):
        bn.rel_error(torch.ones(2), torch.ones(3))
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    grad = bn.testing.numeric_gradient(lambda: x**3, x, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(grad, 3 * x**2)


def test_setup_seeds_sets_threads_and_returns_the_default_device():
    before = torch.get_num_threads()
    try:
        assert bn.setup(3, threads=1) == bn.default_device()
        assert torch.get_num_threads() == 1
        first = torch.rand(4)
        bn.setup(3, threads=None)
        assert torch.get_num_threads() == 1  # None keeps what is set
        assert torch.equal(torch.rand(4), first)
    finally:
        torch.set_num_threads(before)


def test_subplots_refuses_more_than_two_panels_side_by_side():
    with pytest.raises(ValueError, match="at most 2 panels side by side.*got ncols=3"):
        bn.plot.subplots(3)
    fig, axes = bn.plot.subplots(2, 2)
    assert axes.shape == (2, 2)
    bn.plot.plt.close(fig)
