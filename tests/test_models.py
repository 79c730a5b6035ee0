"""The networks' starts: Glorot/He initialization with a gain, and the data-dependent start."""

import math

import pytest
import torch
from torch import nn

import bncourse as bn
from bncourse.lab import benefits, models


def test_xavier_and_kaiming_draw_with_the_documented_spread_and_zero_biases():
    torch.manual_seed(0)
    model = models.mlp([300, 400, 10], "relu")
    models.init_weights(model, "xavier", gain=2.0)
    w = model[0].weight
    bound = 2.0 * math.sqrt(6 / (300 + 400))
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound  # U(-a, a), a at the edge
    assert w.var().item() == pytest.approx(4.0 * 2 / 700, rel=0.02)
    assert all((m.bias == 0).all() for m in model if isinstance(m, nn.Linear))
    models.init_weights(model, "kaiming", gain=math.sqrt(2))
    reference = torch.empty(400, 300)
    nn.init.kaiming_normal_(reference, nonlinearity="relu")  # PyTorch's He initialization for ReLU
    assert model[0].weight.std().item() == pytest.approx(reference.std().item(), rel=0.02)
    assert model[0].weight.mean().abs() < 0.01 * model[0].weight.std()


def test_init_weights_rejects_unknown_schemes_gains_and_models():
    model = models.mlp([4, 3])
    assert models.init_weights(model, "xavier") is model
    with pytest.raises(ValueError, match="scheme must be one of"):
        models.init_weights(model, "orthogonal")
    with pytest.raises(ValueError, match="gain must be positive"):
        models.init_weights(model, "kaiming", gain=0.0)
    with pytest.raises(ValueError, match="nn.Linear"):
        models.init_weights(nn.Sequential(nn.ReLU()), "xavier")


def test_data_init_centres_and_scales_every_hidden_unit_on_the_batch():
    torch.manual_seed(0)
    x = torch.randn(200, 8) * 3 + 2
    model = models.data_init(models.mlp([8, 16, 16, 4], "sigmoid"), x)
    for z in benefits.preactivations(model, x):  # the input of each sigmoid: a hidden Linear's output
        torch.testing.assert_close(z.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
        torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(16), atol=1e-5, rtol=0)
    # it is batch norm's transform on that batch (gamma = 1, beta = 0), folded into W and b
    torch.manual_seed(1)
    plain, normed = models.mlp([8, 16, 4], "tanh"), models.mlp([8, 16, 4], "tanh", norm="bn")
    normed[0].weight.data.copy_(plain[0].weight)
    normed[3].load_state_dict(plain[2].state_dict())
    models.data_init(plain, x)
    torch.testing.assert_close(plain(x), normed(x), atol=1e-4, rtol=1e-4)  # eps = 1e-5 in BN


def test_data_init_keeps_a_constant_unit_finite_and_rejects_what_it_cannot_start():
    x = torch.randn(50, 3)
    model = models.mlp([3, 4, 2], "relu")
    with torch.no_grad():
        model[0].weight[0] = 0.0  # unit 0 is the same for every example
    models.data_init(model, x)
    assert torch.isfinite(model[0].weight).all() and (model[0].weight[0] == 0).all()
    assert model[0](x)[:, 0].abs().max() < 1e-6  # centred
    with pytest.raises(ValueError, match="without normalization layers"):
        models.data_init(models.mlp([3, 4, 2], norm="bn"), x)
    with pytest.raises(TypeError, match="nn.Sequential"):
        models.data_init(nn.Linear(3, 2), x)
    with pytest.raises(ValueError, match=r"shape \(N >= 2"):
        models.data_init(models.mlp([3, 4, 2]), x[:1])


def test_networks_with_and_without_batch_norm_share_their_initial_weights():
    weights = {}
    for norm in (None, "bn", "layer"):
        bn.seed_everything(3)
        model = models.mlp([64, 32, 16, 10], "sigmoid", norm=norm)
        weights[norm] = [m.weight for m in model if isinstance(m, nn.Linear)]
    for norm in ("bn", "layer"):
        for a, b in zip(weights[None], weights[norm], strict=True):
            assert torch.equal(a, b)
    bound = 1 / 64**0.5  # PyTorch's default range, for the weights and the biases
    first = models.mlp([64, 32, 10])[0]
    assert first.weight.abs().max() <= bound and first.bias.abs().max() <= bound
    assert first.weight.abs().max() > 0.9 * bound
