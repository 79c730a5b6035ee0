"""Ghost batch norm and Batch Renormalization, against PyTorch and the paper's own equations."""

import pytest
import torch
from torch import nn

import bncourse as bn
from bncourse.smallbatch import BatchRenorm, GhostBatchNorm, replace_norms
from conftest import tolerances

F64 = tolerances(torch.float64)


def paper_batch_renorm(x, gamma, beta, mu, sigma, r_max, d_max, eps, dy):
    """Ioffe (2017), Algorithm 1 and its backward pass, for x of shape (m, C), written out in float64."""
    m = x.shape[0]
    mu_b = x.mean(0)
    sigma_b = torch.sqrt(((x - mu_b) ** 2).mean(0) + eps)
    r = (sigma_b / sigma).clamp(1 / r_max, r_max)
    d = ((mu_b - mu) / sigma).clamp(-d_max, d_max)
    x_hat = (x - mu_b) / sigma_b * r + d
    y = gamma * x_hat + beta
    dx_hat = dy * gamma
    dsigma_b = (dx_hat * (x - mu_b) * (-r / sigma_b**2)).sum(0)
    dmu_b = (dx_hat * (-r / sigma_b)).sum(0)
    dx = dx_hat * r / sigma_b + dsigma_b * (x - mu_b) / (m * sigma_b) + dmu_b / m
    return y, dx, (dy * x_hat).sum(0), dy.sum(0), mu_b, sigma_b


@pytest.mark.parametrize(
    ("r_max", "d_max", "far"),
    [(3.0, 5.0, 0.0), (3.0, 5.0, 4.0), (1.5, 0.5, 3.0), (1.0, 0.0, 2.0)],
    ids=["inside-the-bounds", "clipped-r-and-d", "tight-bounds", "batch-norm"],
)
def test_batch_renorm_follows_algorithm_1(r_max, d_max, far):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64) * 2 + 1
    dy = torch.randn(16, 5, generator=g, dtype=torch.float64)
    mu = x.mean(0) + far * torch.randn(5, generator=g, dtype=torch.float64)  # far: r and d get clipped
    sigma = x.std(0) * (1 + far * torch.rand(5, generator=g, dtype=torch.float64))
    layer = BatchRenorm(5, eps=1e-3, momentum=0.3, r_max=r_max, d_max=d_max, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5, generator=g)
        layer.bias.normal_(generator=g)
        layer.running_mean.copy_(mu)
        layer.running_std.copy_(sigma)
    xr = x.clone().requires_grad_()
    y = layer(xr)
    y.backward(dy)
    ref_y, ref_dx, ref_dgamma, ref_dbeta, mu_b, sigma_b = paper_batch_renorm(
        x, layer.weight.detach(), layer.bias.detach(), mu, sigma, r_max, d_max, 1e-3, dy)
    pairs = [(y, ref_y), (xr.grad, ref_dx), (layer.weight.grad, ref_dgamma), (layer.bias.grad, ref_dbeta)]
    for ours, ref in pairs:
        torch.testing.assert_close(ours, ref, **F64)
    torch.testing.assert_close(layer.running_mean, mu + 0.3 * (mu_b - mu), **F64)
    torch.testing.assert_close(layer.running_std, sigma + 0.3 * (sigma_b - sigma), **F64)
    r = sigma_b / sigma
    clipped = bool(((r < 1 / r_max) | (r > r_max)).any())
    assert clipped == (far > 0), "the cases should (not) reach the bounds"
    if r_max == 1 and d_max == 0:  # plain batch norm, as PyTorch's
        ref_bn = nn.BatchNorm1d(5, eps=1e-3, dtype=torch.float64)
        ref_bn.load_state_dict({"weight": layer.weight, "bias": layer.bias}, strict=False)
        torch.testing.assert_close(y, ref_bn(x), **F64)


def test_batch_renorm_trains_as_it_infers_inside_the_bounds():
    g = torch.Generator().manual_seed(1)
    layer = BatchRenorm(4, dtype=torch.float64, momentum=0.5)
    x = torch.randn(32, 4, 3, generator=g, dtype=torch.float64) + 0.2
    with torch.no_grad():
        layer.running_mean.copy_(x.mean((0, 2)) + 0.1)
        layer.running_std.copy_(x.std((0, 2)) * 1.2)
        layer.weight.uniform_(0.5, 1.5, generator=g)
    eval_out = layer.eval()(x)
    torch.testing.assert_close(layer.train()(x), eval_out, **F64)  # r and d undo the batch statistics
    sigma = layer.running_std.clone()
    layer.eval()
    torch.testing.assert_close(layer(x), (x - bn.functional.channel_view(layer.running_mean, x))
                               / bn.functional.channel_view(sigma, x) * bn.functional.channel_view(
                                   layer.weight, x) + bn.functional.channel_view(layer.bias, x), **F64)


def test_batch_renorm_errors_and_schedule():
    with pytest.raises(ValueError, match="r_max >= 1 and d_max >= 0, got 0.5 and 1"):
        BatchRenorm(3, r_max=0.5, d_max=1)
    layer = BatchRenorm(3)
    layer.r_max = 0.5
    with pytest.raises(ValueError, match="r_max >= 1 and d_max >= 0, got 0.5 and 5"):
        layer(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"BatchRenorm\(3\) expected 3 channels"):
        BatchRenorm(3)(torch.randn(4, 2))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchRenorm(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match="warmup and ramp as ints >= 0"):
        BatchRenorm(3, warmup=-1)
    # plain batch norm for 2 steps, then bounds relaxed over 4 steps to r_max = 3, d_max = 5
    layer = BatchRenorm(3, warmup=2, ramp=4)
    seen = []
    for _ in range(8):
        r_max, d_max = layer.bounds()
        seen += [r_max.item(), d_max.item()]
        layer(torch.randn(6, 3))
    assert seen == pytest.approx([1, 0, 1, 0, 1, 0, 1.5, 1.25, 2, 2.5, 2.5, 3.75, 3, 5, 3, 5])
    assert layer.num_batches_tracked.item() == 8 and "warmup=2, ramp=4" in repr(layer)
    assert BatchRenorm(3).bounds()[0].item() == 3  # no warm-up: the full bounds at once


def test_batch_renorm_during_warmup_is_batch_norm():
    g = torch.Generator().manual_seed(3)
    layer = BatchRenorm(4, warmup=5, ramp=5, dtype=torch.float64)
    with torch.no_grad():
        layer.running_mean.normal_(generator=g)  # far from the batch's statistics
        layer.running_std.uniform_(0.1, 5, generator=g)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(layer(x), nn.functional.batch_norm(x, None, None, training=True), **F64)


def test_without_bounds_the_gradient_still_goes_through_the_batch_statistics():
    """Unbounded, r and d undo the batch statistics in the forward pass, which then computes the
    inference normalization; the backward pass still sees mu_B and sigma_B (r, d are constants)."""
    g = torch.Generator().manual_seed(4)
    layer = BatchRenorm(3, r_max=1e9, d_max=1e9, affine=False, dtype=torch.float64)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.running_std.copy_(torch.tensor([0.5, 2.0, 3.0]))
    mu, sigma = layer.running_mean.clone(), layer.running_std.clone()
    x = (torch.randn(16, 3, generator=g, dtype=torch.float64) * 2 + 1).requires_grad_()
    dy = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = layer(x)
    torch.testing.assert_close(y, (x - mu) / sigma, **F64)  # the inference normalization ...
    y.backward(dy)
    # ... but not its gradient dy / sigma: r times batch norm's, which sums to zero over the batch
    x_hat = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + layer.eps)
    std_b = torch.sqrt(x.var(0, unbiased=False) + layer.eps)
    bn_grad = (dy - dy.mean(0) - x_hat * (dy * x_hat).mean(0)) / std_b
    torch.testing.assert_close(x.grad, bn_grad * std_b / sigma, **F64)
    assert x.grad.sum(0).abs().max() < 1e-12 and (dy / sigma).sum(0).abs().min() > 0.1


def test_batch_renorm_and_ghost_batch_norm_train_stacked_as_alone():
    """The trainer trains many seeds as one wide network: each member as a single run, the warm-up
    and ramp of the bounds included (the step count is a buffer the members share)."""
    data = bn.data.digits()
    data = bn.data.Split(data.x_train[:256] / 16, data.y_train[:256], data.x_test[:64] / 16, data.y_test[:64])

    def builds(kind):
        def build():
            model = bn.models.mlp([64, 16, 10], norm="bn")
            if kind == "renorm":
                return replace_norms(model, lambda m: BatchRenorm(m.num_features, warmup=3, ramp=6))
            return replace_norms(model, lambda m: GhostBatchNorm.like(m, 4))
        return build

    for kind in ("renorm", "ghost"):
        together = bn.train(builds(kind), data, 12, 0.1, seeds=[0, 1, 2], batch_size=16, progress=False)
        for i, seed in enumerate([0, 1, 2]):
            alone = bn.train(builds(kind), data, 12, 0.1, seeds=[seed], batch_size=16, progress=False)
            for (key, a), b in zip(alone.models[0].state_dict().items(),
                                   together.models[i].state_dict().values(), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"{kind} {key}")
        if kind == "renorm":
            assert together.models[0][1].num_batches_tracked.item() == 12


def test_ghost_batch_norm_normalizes_each_ghost_batch():
    g = torch.Generator().manual_seed(2)
    ghost = GhostBatchNorm(3, ghost_size=4, momentum=0.2, dtype=torch.float64)
    ref = nn.BatchNorm2d(3, momentum=0.2, dtype=torch.float64)
    with torch.no_grad():
        ghost.weight.uniform_(0.5, 1.5, generator=g)
        ghost.bias.normal_(generator=g)
    ref.load_state_dict(ghost.state_dict())
    x = torch.randn(12, 3, 2, 2, generator=g, dtype=torch.float64) * 3 + 1
    xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = ghost(xs)
    means, variances = [], []
    ref_out = []
    for chunk in xr.split(4):
        ref_out.append(nn.functional.batch_norm(chunk, None, None, ref.weight, ref.bias, training=True))
        means.append(chunk.detach().mean((0, 2, 3)))
        variances.append(chunk.detach().var((0, 2, 3)))
    torch.testing.assert_close(out, torch.cat(ref_out), **F64)
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    out.backward(dy)
    torch.cat(ref_out).backward(dy)
    torch.testing.assert_close(xs.grad, xr.grad, **F64)
    torch.testing.assert_close(ghost.weight.grad, ref.weight.grad, **F64)
    # running statistics: the average over the ghost batches (what K devices hold on average)
    torch.testing.assert_close(ghost.running_mean, 0.2 * torch.stack(means).mean(0), **F64)
    torch.testing.assert_close(ghost.running_var, 0.8 + 0.2 * torch.stack(variances).mean(0), **F64)
    ghost.eval(), ref.load_state_dict(ghost.state_dict()), ref.eval()
    torch.testing.assert_close(ghost(x), ref(x), **F64)
    whole = GhostBatchNorm(3, ghost_size=12, dtype=torch.float64)
    torch.testing.assert_close(whole(x), nn.BatchNorm2d(3, dtype=torch.float64)(x), **F64)
    with pytest.raises(ValueError, match="multiple of 4, got 10"):
        GhostBatchNorm(3, ghost_size=4)(torch.randn(10, 3))


def test_replace_norms_keeps_everything_else():
    bn.seed_everything(0)
    model = bn.models.mlp([4, 8, 8, 2], norm="bn")
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert replace_norms(model, lambda m: BatchRenorm(m.num_features)) is model
    assert [type(m).__name__ for m in model] == ["Linear", "BatchRenorm", "ReLU", "Linear", "BatchRenorm",
                                                 "ReLU", "Linear"]
    assert [m for m in model if isinstance(m, nn.Linear)] == linears
