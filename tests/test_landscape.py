"""The least-squares landscape of chapters 1-2: data with exact moments, Hessian, gradient descent."""

import math

import pytest
import torch

from bncourse.lab import landscape


def test_two_features_has_exactly_the_requested_moments():
    x, y = landscape.two_features(n=50, scales=(0.5, 20.0), means=(1.0, -4.0), correlation=0.3)
    assert x.shape == (50, 2) and y.shape == (50,) and x.dtype == torch.float64
    torch.testing.assert_close(x.mean(0), torch.tensor([1.0, -4.0], dtype=torch.float64))
    torch.testing.assert_close(x.std(0, unbiased=False), torch.tensor([0.5, 20.0], dtype=torch.float64))
    assert torch.corrcoef(x.T)[0, 1].item() == pytest.approx(0.3, abs=1e-12)


def test_two_features_is_reproducible_and_seeded():
    a, _ = landscape.two_features(seed=3)
    b, _ = landscape.two_features(seed=3)
    c, _ = landscape.two_features(seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kwargs, match", [
    ({"scales": (1.0, 0.0)}, "scales must be positive"),
    ({"scales": (1.0, 2.0, 3.0)}, "scales must hold two numbers"),
    ({"correlation": 1.0}, "correlation must be in"),
    ({"n": 2}, "n must be an int"),
])
def test_two_features_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        landscape.two_features(**kwargs)


def test_hessian_and_condition_number_in_closed_form():
    # Centered, uncorrelated features: H = diag(s1^2, s2^2, 1), so kappa = (s2/s1)^2 here.
    x, y = landscape.two_features(scales=(1.0, 30.0))
    problem = landscape.LeastSquares(x, y)
    torch.testing.assert_close(problem.hessian, torch.diag(torch.tensor([1.0, 900.0, 1.0],
                                                                        dtype=torch.float64)))
    assert problem.condition_number == pytest.approx(900.0)
    assert problem.max_stable_lr == pytest.approx(2 / 900.0)


def test_loss_grad_and_minimizer_agree_with_autograd_and_lstsq():
    x, y = landscape.two_features(scales=(2.0, 5.0), means=(1.0, 3.0), correlation=-0.4, seed=1)
    problem = landscape.LeastSquares(x, y)
    theta = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64, requires_grad=True)
    problem.loss(theta).backward()
    torch.testing.assert_close(problem.grad(theta.detach()), theta.grad)
    assert problem.grad(problem.minimizer).abs().max().item() < 1e-10
    grid = torch.randn(4, 5, 3, dtype=torch.float64)
    assert problem.loss(grid).shape == (4, 5)
    assert (problem.loss(grid) >= problem.min_loss).all()


def test_without_bias_theta_has_one_entry_per_feature():
    x, y = landscape.two_features()
    problem = landscape.LeastSquares(x, y, bias=False)
    assert problem.hessian.shape == (2, 2) and problem.minimizer.shape == (2,)
    with pytest.raises(ValueError, match="size 2"):
        problem.loss(torch.zeros(3))


def test_least_squares_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="x must have shape"):
        landscape.LeastSquares(torch.zeros(5), torch.zeros(5))
    with pytest.raises(ValueError, match="y must have shape"):
        landscape.LeastSquares(torch.zeros(5, 2), torch.zeros(4))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        landscape.LeastSquares([[1.0, 2.0]], torch.zeros(1))


def test_singular_hessian_has_infinite_condition_number():
    x = torch.ones(10, 1, dtype=torch.float64)  # a constant feature duplicates the bias
    assert landscape.LeastSquares(x, torch.zeros(10)).condition_number == math.inf


def test_gradient_descent_matches_the_plain_update():
    x, y = landscape.two_features(scales=(1.0, 4.0), means=(0.5, 1.0), seed=2)
    problem = landscape.LeastSquares(x, y)
    lr = 0.9 * problem.max_stable_lr
    run = landscape.gradient_descent(problem, lr, start=[1.0, -1.0, 0.0], max_steps=25, tol=0)
    theta = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
    for _ in range(25):
        theta = theta - lr * problem.grad(theta)
    assert run.steps == 25 and run.converged_at is None and not run.diverged
    torch.testing.assert_close(run.path[-1], theta)
    torch.testing.assert_close(run.loss, problem.loss(run.path))


def test_gradient_descent_stability_edge_is_two_over_lambda_max():
    x, y = landscape.two_features(scales=(1.0, 10.0))
    problem = landscape.LeastSquares(x, y)
    below = landscape.gradient_descent(problem, 0.99 * problem.max_stable_lr)
    above = landscape.gradient_descent(problem, 1.01 * problem.max_stable_lr)
    assert below.converged_at is not None and not below.diverged
    assert above.diverged and above.converged_at is None


def test_steps_to_converge_follow_kappa():
    # lr = 1.9 / lambda_max: the slowest direction shrinks by (1 - 1.9 / kappa) per step.
    steps = {}
    for ratio in (10.0, 30.0):
        problem = landscape.LeastSquares(*landscape.two_features(scales=(1.0, ratio)))
        run = landscape.gradient_descent(problem, 1.9 / problem.eigenvalues[-1].item(), tol=1e-3)
        steps[ratio] = run.converged_at
        predicted = math.log(1e3) / -math.log(1 - 1.9 / problem.condition_number)
        assert 0.85 * predicted <= run.converged_at <= 1.01 * predicted
    assert steps[30.0] / steps[10.0] > 8  # kappa grew 9x


def test_gradient_descent_one_step_when_perfectly_conditioned():
    problem = landscape.LeastSquares(*landscape.two_features(scales=(1.0, 1.0)))
    assert landscape.gradient_descent(problem, 1.0).converged_at == 1


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("scales, means, correlation", [
    ((1.0, 1.0), (0.0, 0.0), 0.0), ((1.0, 3.0), (0.0, 0.0), 0.0), ((1.0, 30.0), (0.0, 0.0), 0.0),
    ((1.0, 10.0), (3.0, 5.0), 0.0), ((1.0, 1.0), (0.0, 0.0), 0.9), ((2.0, 5.0), (1.0, 3.0), -0.4),
])
def test_step_bounds_hold_the_step_count_on_any_draw(seed, scales, means, correlation):
    x, y = landscape.two_features(scales=scales, means=means, correlation=correlation, seed=seed)
    for features in (x, (x - x.amin(0)) / (x.amax(0) - x.amin(0))):  # raw and min-max scaled
        problem = landscape.LeastSquares(features, y)
        for alpha in (1.0, 1.9):
            lr = alpha / problem.eigenvalues[-1].item()
            low, high = landscape.step_bounds(problem, lr)
            steps = landscape.gradient_descent(problem, lr).converged_at
            assert low <= high
            assert low - 1 <= steps <= high + 1, (alpha, low, steps, high)


def test_step_bounds_edge_cases():
    problem = landscape.LeastSquares(*landscape.two_features(scales=(1.0, 1.0)))
    assert landscape.step_bounds(problem, 1.0) == (1.0, 1.0)  # a round bowl: one step lands
    q = 0.9  # lr = 1.9 / lambda on the round bowl: every direction shrinks by 0.9 a step
    expected = math.ceil(math.log(1e3) / -math.log(q))
    assert landscape.step_bounds(problem, 1.9) == (expected, expected)
    assert landscape.step_bounds(problem, 2.5) == (math.inf, math.inf)  # beyond 2 / lambda_max
    assert landscape.step_bounds(problem, 0.5, start=problem.minimizer) == (0.0, 0.0)
    x, y = landscape.two_features(scales=(1.0, 10.0))
    problem = landscape.LeastSquares(x, y)
    # all of the starting error along w2, the steep direction: the slow ones hold none of it
    start = problem.minimizer + torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    low, high = landscape.step_bounds(problem, 0.5 / 100, start=start)
    assert low == 0 and high == math.ceil(math.log(1e3) / -math.log(1 - 0.5 / 100))
    assert landscape.gradient_descent(problem, 0.5 / 100, start=start).converged_at < 20
    with pytest.raises(ValueError, match="lr must be positive"):
        landscape.step_bounds(problem, 0.0)
    with pytest.raises(ValueError, match="tol must be in"):
        landscape.step_bounds(problem, 0.1, tol=1.0)
    with pytest.raises(ValueError, match="size 3"):
        landscape.step_bounds(problem, 0.1, start=torch.zeros(2))


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": 0.0}, "lr must be positive"),
    ({"lr": 0.1, "max_steps": 0}, "max_steps must be"),
    ({"lr": 0.1, "tol": -1.0}, "tol must be"),
    ({"lr": 0.1, "start": [0.0, 0.0]}, "size 3"),
])
def test_gradient_descent_rejects_bad_input(kwargs, match):
    problem = landscape.LeastSquares(*landscape.two_features())
    with pytest.raises(ValueError, match=match):
        landscape.gradient_descent(problem, **kwargs)


def test_plot_landscape_draws_contours_minimum_and_path():
    import matplotlib.pyplot as plt

    problem = landscape.LeastSquares(*landscape.two_features(scales=(1.0, 5.0)))
    run = landscape.gradient_descent(problem, 0.5 * problem.max_stable_lr, max_steps=10, tol=0)
    fig, ax = plt.subplots()
    landscape.plot_landscape(ax, problem, run.path, label="GD")
    assert ax.get_xlabel() == "$w_1$" and ax.get_ylabel() == "$w_2$"
    assert len(ax.collections) >= 1  # the contour set
    assert [line.get_label() for line in ax.lines] == [r"minimum $\theta^*$", "GD"]
    plt.close(fig)
