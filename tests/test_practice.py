"""Chapter 6's tools: the SGD loop, the convnet, the residual network, weight decay on
scale-invariant weights, dropout's variance shift, and fine-tuning with frozen batch norm."""

import copy
import math

import pytest
import torch
from torch import nn

import bncourse as bn
from bncourse.lab import convnets, dropout_shift, finetune, residual, weight_decay


def blobs(n=64, features=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, features, generator=g) * 2
    return centres[y] + torch.randn(n, features, generator=g), y


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---- convnets -----------------------------------------------------------------------------------


def test_conv_net_shapes_bias_and_init():
    x = torch.rand(5, 64)
    with_bn = convnets.conv_net(norm="bn")
    assert with_bn(x).shape == (5, 10)
    convs = [m for m in with_bn.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(c.bias is None for c in convs)
    assert len(bn.inference.bn_layers(with_bn)) == 3
    plain = convnets.conv_net(norm=None, init="he")
    assert all(c.bias is not None and torch.all(c.bias == 0) for c in plain.modules()
               if isinstance(c, nn.Conv2d))
    with pytest.raises(ValueError, match="init"):
        convnets.conv_net(init="xavier")
    with pytest.raises(ValueError, match="norm"):
        convnets.conv_block(1, 2, norm="layer")


# ---- residual -------------------------------------------------------------------------------------


def test_zero_init_makes_every_block_the_identity_after_relu():
    torch.manual_seed(0)
    model = residual.residual_mlp(depth=3, width=8, inputs=5, classes=2, zero_init=True)
    block = model[3]
    h = torch.randn(16, 8)
    torch.testing.assert_close(block(h), torch.relu(h))
    assert all(b.last_bn.weight.abs().sum() == 0 for b in model if isinstance(b, residual.ResidualBlock))
    with pytest.raises(ValueError, match="ResidualBlock"):
        residual.zero_init_residual(nn.Linear(2, 2))


def test_stream_std_grows_with_depth_unless_zero_init():
    x = torch.randn(256, 64)
    torch.manual_seed(0)
    plain = residual.residual_mlp(depth=8)
    before = state(plain)
    stds = residual.stream_std(plain, x)
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())
    assert stds[-1] > 2 * stds[0]
    zero = residual.stream_std(residual.residual_mlp(depth=8, zero_init=True), x)
    assert max(zero) - min(zero) < 1e-6


# ---- weight decay -----------------------------------------------------------------------------------


def test_scale_invariant_weights_and_angle():
    model = bn.models.mlp([8, 16, 16, 3], norm="bn")
    found = weight_decay.scale_invariant_weights(model)
    assert [tuple(w.shape) for w in found] == [(16, 8), (16, 16)]
    assert len(weight_decay.scale_invariant_weights(convnets.conv_net())) == 3
    with pytest.raises(ValueError, match="followed by a batch norm"):
        weight_decay.scale_invariant_weights(bn.models.mlp([8, 16, 3]))
    a = torch.tensor([1.0, 0.0])
    assert weight_decay.angle(a, torch.tensor([0.0, 3.0])) == pytest.approx(math.pi / 2)
    assert weight_decay.angle(a, 5 * a) == 0.0
    assert weight_decay.equilibrium_angle(0.2, 0.01) == pytest.approx(0.0632455532)


def test_trace_norms_records_every_step_and_the_norm_shrinks_with_decay():
    x, y = blobs(n=96)
    data = bn.data.Split(x, y, x, y)
    trace = weight_decay.trace_norms(lambda: bn.models.mlp([8, 16, 3], norm="bn"), data, steps=30,
                                     lr=0.5, weight_decay=0.1, batch_size=16, seeds=[0, 1])
    assert trace.norms.shape == (2, 31, 1) and trace.angles.shape == (2, 30, 1)
    assert trace.runs.step_loss.shape == (2, 30)
    assert (trace.norms[:, -1, 0] < trace.norms[:, 0, 0]).all()
    for i, model in enumerate(trace.runs.models):
        assert abs(trace.norms[i, -1, 0] - model[0].weight.norm().item()) < 1e-5
    assert trace.grad_norms.shape == (2, 30, 1) and (trace.grad_norms > 0).all()


def test_trace_norms_records_the_angle_between_successive_weights():
    x, y = blobs(n=96)
    data = bn.data.Split(x, y, x, y)
    models = [bn.trainer.built(lambda: bn.models.mlp([8, 16, 16, 3], norm="bn"), s) for s in (0, 1)]
    before = [[w.detach().clone() for w in weight_decay.scale_invariant_weights(m)] for m in models]
    trace = weight_decay.trace_norms(models, data, steps=1, lr=0.5, weight_decay=0.1, batch_size=16,
                                     seeds=[0, 1])
    assert trace.norms.dtype == trace.angles.dtype == torch.float64
    for i, model in enumerate(models):
        after = weight_decay.scale_invariant_weights(model)
        for j, (w0, w1) in enumerate(zip(before[i], after, strict=True)):
            assert trace.angles[i, 0, j].item() == pytest.approx(weight_decay.angle(w0, w1), rel=1e-9)
            assert trace.norms[i, 0, j].item() == pytest.approx(w0.double().norm().item(), rel=1e-12)
            assert trace.norms[i, 1, j].item() == pytest.approx(w1.double().norm().item(), rel=1e-12)


def test_trace_norms_decays_only_the_scale_invariant_weights_as_pytorch_would():
    x, y = blobs(n=96)
    bn.seed_everything(0)
    model = bn.models.mlp([8, 16, 16, 3], norm="bn").double()
    reference = copy.deepcopy(model)
    data = bn.data.Split(x.double(), y, x.double(), y)
    weight_decay.trace_norms([model], data, steps=12, lr=0.5, weight_decay=0.1, batch_size=16)
    invariant = weight_decay.scale_invariant_weights(reference)
    others = [p for p in reference.parameters() if all(p is not w for w in invariant)]
    opt = torch.optim.SGD([{"params": invariant, "weight_decay": 0.1},
                           {"params": others, "weight_decay": 0.0}], lr=0.5)
    gen, step = bn.generator(0), 0
    while step < 12:
        for xb, yb in bn.data.batches(data.x_train, data.y_train, 16, gen):
            opt.zero_grad()
            nn.functional.cross_entropy(reference(xb), yb).backward()
            opt.step()
            step += 1
            if step == 12:
                break
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    # without decay the step is orthogonal to w: tan(angle) = lr |g| / |w|
    plain = weight_decay.trace_norms(lambda: bn.models.mlp([8, 16, 16, 3], norm="bn").double(), data,
                                     steps=12, lr=0.5, batch_size=16)
    torch.testing.assert_close(plain.angles.tan() * plain.norms[:, :-1] / 0.5, plain.grad_norms,
                               rtol=1e-4, atol=0)


# ---- dropout ----------------------------------------------------------------------------------------


def test_dropout_mlp_places_dropout():
    def drops(model):
        return [i for i, m in enumerate(model) if isinstance(m, nn.Dropout)]

    assert drops(dropout_shift.dropout_mlp([4, 8, 8, 2], 0.5, "none")) == []
    assert drops(dropout_shift.dropout_mlp([4, 8, 8, 2], 0.5, "after_bn")) == [6]
    assert drops(dropout_shift.dropout_mlp([4, 8, 8, 2], 0.5, "before_bn")) == [3, 7]
    with pytest.raises(ValueError, match="where"):
        dropout_shift.dropout_mlp([4, 8, 2], 0.5, "between")


def test_dropout_variance_ratio_matches_a_simulation():
    g = torch.Generator().manual_seed(0)
    h = torch.relu(torch.randn(200_000, generator=g))
    mask = (torch.rand(h.shape, generator=g) > 0.5).float() / 0.5
    ratio = h.var() / (h * mask).var()
    assert dropout_shift.dropout_variance_ratio(h.mean().item(), h.var().item(), 0.5) == \
        pytest.approx(ratio.item(), rel=0.02)
    assert dropout_shift.dropout_variance_ratio(1.0, 2.0, 0.0) == 1.0


def test_variance_ratios_is_one_without_dropout_and_below_one_with_it():
    x, y = blobs(n=256, features=8)
    for where, low, high in (("none", 0.9, 1.1), ("before_bn", 0.2, 0.9)):
        torch.manual_seed(0)
        model = dropout_shift.dropout_mlp([8, 32, 32, 3], 0.5, where)
        with torch.no_grad():
            for _ in range(200):   # running statistics of the training-mode inputs
                model.train()(x)
        ratios = dropout_shift.variance_ratios(model, x)
        assert low < ratios[1] < high, (where, ratios)
        assert model.training


def test_variance_ratios_reduce_per_channel_for_images():
    model = convnets.conv_net()
    x = torch.rand(64, 64)
    with torch.no_grad():
        for layer in bn.inference.bn_layers(model):
            layer.momentum = None            # cumulative: the exact running variance
        for _ in range(3):
            model.train()(x)
    ratios = dropout_shift.variance_ratios(model, x)   # layer 1 sees the same x: no shift
    assert len(ratios) == 3 and abs(ratios[0] - 1) < 1e-3



def test_linear_shift_predicts_the_ratio_behind_the_first_dropout():
    x, _ = blobs(n=2048, features=8)
    bn.seed_everything(0)
    model = dropout_shift.dropout_mlp([8, 32, 32, 32, 3], 0.5, "before_bn")
    with torch.no_grad():
        for layer in bn.inference.bn_layers(model):
            layer.momentum = None                    # cumulative: the exact running variance
        for _ in range(50):                          # many dropout masks, one per pass
            model.train()(x)
    measured = dropout_shift.variance_ratios(model, x)
    found = dropout_shift.linear_shift(model, x)
    assert [t.layer for t in found] == [2, 3]
    # layer 2's inputs are distributed alike in training and at test: the formula is the measurement
    assert found[0].predicted == pytest.approx(measured[1], abs=0.03)
    for t in found:
        assert t.independent <= 0.5 + 1e-9                   # at most 1 - p without covariances
        assert t.covariance_share < 1 and -1 < t.mean_correlation < 1
    assert model.training
    with pytest.raises(ValueError, match="Dropout -> Linear"):
        dropout_shift.linear_shift(dropout_shift.dropout_mlp([8, 16, 3], 0.5, "after_bn"), x)


def test_linear_shift_of_independent_units_is_the_single_unit_ratio():
    g = torch.Generator().manual_seed(1)
    h = torch.relu(torch.randn(200_000, 4, generator=g, dtype=torch.float64))
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3)).double()
    found = dropout_shift.linear_shift(model, h)[0]
    single = dropout_shift.dropout_variance_ratio(h.mean().item(), h.var().item(), 0.5)
    assert found.layer == 1
    assert found.independent == pytest.approx(single, rel=0.01)
    assert found.predicted == pytest.approx(single, rel=0.02)
    assert abs(found.mean_correlation) < 0.01

# ---- finetune ---------------------------------------------------------------------------------------


def trained_bn2d(seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = nn.BatchNorm2d(3)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(3, generator=g) + 0.5)
        layer.bias.copy_(torch.randn(3, generator=g))
        layer.running_mean.copy_(torch.randn(3, generator=g))
        layer.running_var.copy_(torch.rand(3, generator=g) + 0.1)
    return layer


def test_frozen_batch_norm_is_eval_mode_batch_norm_in_both_modes():
    layer = trained_bn2d().eval()
    frozen = finetune.FrozenBatchNorm.from_batch_norm(layer)
    x = torch.randn(4, 3, 5, 5)
    assert list(frozen.parameters()) == []
    for mode in (frozen.train(), frozen.eval()):
        torch.testing.assert_close(mode(x), layer(x))
    loaded = finetune.FrozenBatchNorm(3)
    loaded.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "num_batches_tracked"})
    torch.testing.assert_close(loaded(x), layer(x))
    bn.check.frozen_batch_norm(finetune.FrozenBatchNorm)
    with pytest.raises(ValueError, match="expected an input"):
        frozen(torch.randn(4, 2))


def test_freeze_batch_norm_replaces_every_layer():
    model = convnets.conv_net(norm="torch_bn")
    model.eval()
    x = torch.rand(6, 64)
    expected = model(x)
    finetune.freeze_batch_norm(model)
    assert bn.inference.bn_layers(model) == []
    assert sum(isinstance(m, finetune.FrozenBatchNorm) for m in model.modules()) == 3
    torch.testing.assert_close(model.train()(x), expected)
    with pytest.raises(ValueError, match="no batch norm"):
        finetune.freeze_batch_norm(nn.Linear(2, 2))


@pytest.mark.parametrize("strategy", finetune.STRATEGIES)
def test_fine_tune_strategies(strategy):
    x, y = blobs(n=48)
    models = [bn.trainer.built(lambda: bn.models.mlp([8, 16, 3], norm="bn"), s) for s in (0, 1)]
    before = [state(m) for m in models]
    tuned, runs = finetune.fine_tune(models, x + 3, y, strategy, steps=6, lr=0.05, batch_size=4,
                                     seeds=[0, 1])
    assert runs.step_loss.shape == (2, 6) and len(tuned) == 2
    for model, old in zip(models, before, strict=True):  # the originals are untouched
        assert all(torch.equal(v, old[k]) for k, v in model.state_dict().items())
    for model, layer, old in zip(models, (t[1] for t in tuned), before, strict=True):
        if strategy == "frozen":
            assert isinstance(layer, finetune.FrozenBatchNorm)
            torch.testing.assert_close(layer.running_mean, old["1.running_mean"])
        elif strategy == "eval":
            assert torch.equal(layer.running_mean, old["1.running_mean"])
            assert not torch.equal(layer.weight, old["1.weight"])
        elif strategy == "re-estimated":
            hidden = (x + 3) @ model[0].weight.T
            torch.testing.assert_close(layer.running_mean, hidden.mean(0), atol=1e-4, rtol=1e-4)
        else:
            assert not torch.equal(layer.running_mean, old["1.running_mean"])
    with pytest.raises(ValueError, match="strategy"):
        finetune.fine_tune(models, x, y, "sync", steps=1, lr=0.1, batch_size=4)


def test_fine_tune_takes_one_sample_per_model_and_a_test_set():
    x, y = blobs(n=48)
    models = [bn.trainer.built(lambda: bn.models.mlp([8, 16, 3], norm="bn"), s) for s in (0, 1)]
    xs, ys = [x[:32], x[16:]], [y[:32], y[16:]]
    tuned, runs = finetune.fine_tune(models, xs, ys, "re-estimated", steps=5, lr=0.05, batch_size=4,
                                     seeds=[0, 1], test=(x, y))
    for model, start, sample in zip(tuned, models, xs, strict=True):  # its own sample's, then held
        hidden = sample @ start[0].weight.T
        torch.testing.assert_close(model[1].running_mean, hidden.mean(0), atol=1e-4, rtol=1e-4)
    for model, acc in zip(tuned, runs.test_acc[:, -1], strict=True):
        assert bn.inference.accuracy(model, x, y) == pytest.approx(acc.item(), abs=1e-6)
    alone, _ = finetune.fine_tune(models[1:], x[16:], y[16:], "re-estimated", steps=5, lr=0.05,
                                  batch_size=4, seeds=[1])
    for a, b in zip(alone[0].parameters(), tuned[1].parameters(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="one per model"):
        finetune.fine_tune(models, [x], y, "train", steps=1, lr=0.1, batch_size=4, seeds=[0, 1])
