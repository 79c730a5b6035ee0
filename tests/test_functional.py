"""The kernels of bncourse.functional against PyTorch, float64 references and finite differences."""

import pytest
import torch
import torch.nn.functional as TF

import bncourse as bn
from bncourse import functional as F
from bncourse import tuned
from conftest import tolerances

SHAPES = [(4, 3), (16, 5), (5, 3, 7), (2, 4, 3, 5), (3, 2, 2, 3, 4), (1, 3, 2)]
DTYPES = [torch.float32, torch.float64]


def make(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 3 + 2).to(device)
    c = shape[1]
    gamma = (torch.rand(c, generator=g, dtype=dtype) + 0.5).to(device)
    beta = torch.randn(c, generator=g, dtype=dtype).to(device)
    dout = torch.randn(shape, generator=g, dtype=dtype).to(device)
    return x, gamma, beta, dout


def torch_grads(x, gamma, beta, dout):
    xs = [t.detach().clone().requires_grad_() for t in (x, gamma, beta)]
    out = TF.batch_norm(xs[0], None, None, xs[1], xs[2], training=True)
    out.backward(dout)
    return out.detach(), [t.grad for t in xs]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernels", [F, tuned], ids=["readable", "tuned"])
def test_forward_and_backwards_match_torch(kernels, shape, dtype, device):
    x, gamma, beta, dout = make(shape, dtype, device)
    out, cache = kernels.batch_norm_forward(x, gamma, beta)
    ref_out, ref_grads = torch_grads(x, gamma, beta, dout)
    tol = tolerances(dtype)
    torch.testing.assert_close(out, ref_out, **tol)
    backwards = [kernels.batch_norm_backward_fused] + ([F.batch_norm_backward] if kernels is F else [])
    for backward in backwards:
        for ours, ref in zip(backward(dout, cache), ref_grads, strict=True):
            torch.testing.assert_close(ours, ref, **tol)


@pytest.mark.parametrize("affine", [True, False])
def test_tuned_kernels_compute_the_readable_kernels_values(affine):
    x, gamma, beta, dout = make((7, 3, 5), torch.float64, "cpu", seed=1)
    w, b = (gamma, beta) if affine else (None, None)
    readable, tuned_ = F.batch_norm_forward(x, w, b), tuned.batch_norm_forward(x, w, b)
    torch.testing.assert_close(tuned_[0], readable[0], rtol=1e-12, atol=1e-12)
    for a, r in zip(tuned.batch_norm_backward_fused(dout, tuned_[1]),
                    F.batch_norm_backward_fused(dout, readable[1]), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_forward_statistics_are_biased_and_per_channel(device):
    x, gamma, beta, _ = make((6, 3, 4, 5), torch.float64, device)
    out, cache = F.batch_norm_forward(x, gamma, beta, eps=1e-3)
    per_channel = x.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(cache.mean, per_channel.mean(1))
    torch.testing.assert_close(cache.var, per_channel.var(1, unbiased=False))
    torch.testing.assert_close(cache.inv_std, 1 / torch.sqrt(cache.var + 1e-3))
    # the normalized values have mean 0 and (almost, because of eps) variance 1 per channel
    x_hat = cache.x_hat.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(x_hat.mean(1), torch.zeros(3, dtype=x.dtype, device=device))
    torch.testing.assert_close(x_hat.var(1, unbiased=False), cache.var / (cache.var + 1e-3))


def test_forward_without_affine_is_the_normalized_input(device):
    x, *_ = make((8, 3), torch.float64, device)
    out, cache = F.batch_norm_forward(x, None, None)
    torch.testing.assert_close(out, cache.x_hat)
    assert out.data_ptr() != cache.x_hat.data_ptr()


@pytest.mark.parametrize("backward", [F.batch_norm_backward, F.batch_norm_backward_fused])
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4)])
def test_backward_matches_finite_differences(backward, shape):
    x, gamma, beta, dout = make(shape, torch.float64, "cpu", seed=3)
    _, cache = F.batch_norm_forward(x, gamma, beta)
    dx, dgamma, dbeta = backward(dout, cache)

    def f():
        return F.batch_norm_forward(x, gamma, beta)[0]

    for analytic, wrt in ((dx, x), (dgamma, gamma), (dbeta, beta)):
        numeric = bn.testing.numeric_gradient(f, wrt, dout)
        assert bn.rel_error(analytic, numeric) < 1e-6


@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_passes_gradcheck(affine):
    x, gamma, beta, _ = make((6, 3, 2), torch.float64, "cpu")
    inputs = [x.requires_grad_()]
    if affine:
        inputs += [gamma.requires_grad_(), beta.requires_grad_()]
    else:
        inputs += [None, None]

    def f(x, w, b):
        return F.batch_norm(x, None, None, w, b, training=True)

    assert torch.autograd.gradcheck(f, tuple(inputs))


def test_batch_norm_backward_is_ours_not_torchs():
    x, gamma, beta, _ = make((6, 3), torch.float64, "cpu")
    out = F.batch_norm(x.requires_grad_(), None, None, gamma, beta, training=True)
    assert type(out.grad_fn).__name__ == "BatchNormFunctionBackward"


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (2, 3, 4, 4), (2, 3, 2, 2, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0])
def test_batch_norm_matches_torch_train_then_eval(shape, dtype, affine, momentum, device):
    x, gamma, beta, dout = make(shape, dtype, device)
    w, b = (gamma, beta) if affine else (None, None)
    c, tol = shape[1], tolerances(dtype)
    start = (torch.rand(c, dtype=dtype, device=device), torch.rand(c, dtype=dtype, device=device) + 1)
    stats = {"ours": [t.clone() for t in start], "torch": [t.clone() for t in start]}
    for step in range(3):
        xs = x * (step + 1) + step
        ours = F.batch_norm(xs, *stats["ours"], w, b, training=True, momentum=momentum, eps=1e-3)
        ref = TF.batch_norm(xs, *stats["torch"], w, b, training=True, momentum=momentum, eps=1e-3)
        torch.testing.assert_close(ours, ref, **tol)
        for a, r in zip(stats["ours"], stats["torch"], strict=True):
            torch.testing.assert_close(a, r, **tol)
    ours = F.batch_norm(x, *stats["ours"], w, b, training=False, eps=1e-3)
    ref = TF.batch_norm(x, *stats["torch"], w, b, training=False, eps=1e-3)
    torch.testing.assert_close(ours, ref, **tol)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_gradients_match_torch(training, dtype, device):
    x, gamma, beta, dout = make((6, 4, 3), dtype, device)
    rm, rv = torch.randn(4, dtype=dtype, device=device), torch.rand(4, dtype=dtype, device=device) + 0.5
    grads = []
    for fn in (F.batch_norm, TF.batch_norm):
        xs = [t.detach().clone().requires_grad_() for t in (x, gamma, beta)]
        fn(xs[0], rm.clone(), rv.clone(), xs[1], xs[2], training=training).backward(dout)
        grads.append([t.grad for t in xs])
    for a, r in zip(*grads, strict=True):
        torch.testing.assert_close(a, r, **tolerances(dtype))


@pytest.mark.parametrize("kernels", [F, tuned], ids=["readable", "tuned"])
def test_float32_variance_is_accurate_with_a_large_offset(kernels):
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(65536, 8, generator=g, dtype=torch.float64) + 1e4
    exact = x64.var(0, unbiased=False)
    _, cache = kernels.batch_norm_forward(x64.float(), None, None)
    assert bn.rel_error(cache.var, exact) <= 1e-3
    layer = bn.nn.BatchNorm1d(8, momentum=1.0)
    layer(x64.float())
    assert bn.rel_error(layer.running_var, x64.var(0, unbiased=True)) <= 1e-3
    assert bn.rel_error(layer.running_mean, x64.mean(0)) <= 1e-6


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.randn(5), "expected an input of shape \\(N, C\\) or \\(N, C, \\*\\), got 1D"),
        (torch.ones(4, 3, dtype=torch.long), "expected a floating-point input.*got dtype torch.int64"),
        (torch.randn(1, 3), "more than 1 value per channel when training, got 1 in .*\\(1, 3\\)"),
        (torch.randn(1, 3, 1, 1), "expected more than 1 value per channel when training"),
    ],
)
def test_bad_input_raises_a_clear_error(x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        F.batch_norm(x, None, None, training=True)
    with pytest.raises((ValueError, TypeError), match=match):
        F.batch_norm_forward(x, None, None)


def test_wrong_parameter_sizes_raise_a_clear_error():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"expected weight of shape \(3,\).*got shape \(4,\)"):
        F.batch_norm(x, None, None, torch.ones(4), None, training=True)
    with pytest.raises(ValueError, match=r"expected running_mean of shape \(3,\).*got shape \(2,\)"):
        F.batch_norm(x, torch.zeros(2), torch.ones(3), training=True)
    with pytest.raises(ValueError, match=r"expected gamma of shape \(3,\)"):
        F.batch_norm_forward(x, torch.ones(3, 1), None)


def test_eval_without_running_statistics_raises():
    with pytest.raises(ValueError, match="expected running_mean and running_var in eval mode"):
        F.batch_norm(torch.randn(4, 3), None, None, training=False)


def test_one_example_is_fine_in_eval_mode():
    x = torch.randn(1, 3)
    out = F.batch_norm(x, torch.zeros(3), torch.ones(3), training=False, eps=0.0)
    torch.testing.assert_close(out, x)


def test_batch_norm_has_torchs_signature_and_one_keyword_only_switch():
    import inspect

    ours, ref = inspect.signature(F.batch_norm), inspect.signature(TF.batch_norm)
    params = [(p.name, p.default, p.kind) for p in ours.parameters.values()]
    assert params[:-1] == [(p.name, p.default, p.kind) for p in ref.parameters.values()]
    assert params[-1] == ("compiled", False, inspect.Parameter.KEYWORD_ONLY)


@pytest.mark.parametrize(("training", "eps", "match"), [
    (True, 0.0, "eps must be positive when training.*got 0.0"),
    (True, -1.0, "eps must be positive when training.*got -1.0"),
    (False, -1.0, "eps must be non-negative, got -1.0"),
])
def test_bad_eps_raises_as_torchs(training, eps, match):
    with pytest.raises(ValueError, match=match):
        F.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=training, eps=eps)


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (0,), (3, 0)])
@pytest.mark.parametrize("training", [True, False])
def test_empty_input_gives_an_empty_output_and_leaves_the_statistics(shape, training):
    c = shape[1] if len(shape) > 1 else 0
    stats = [torch.zeros(c), torch.ones(c)]
    out = F.batch_norm(torch.randn(shape), *stats, training=training)
    assert out.shape == shape
    torch.testing.assert_close(stats, [torch.zeros(c), torch.ones(c)])
