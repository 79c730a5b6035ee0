"""Feature scaling: fitted on one split, applied to any; agrees with scikit-learn."""

import pytest
import torch
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from bncourse.lab import data, scaling


@pytest.fixture(scope="module")
def digits():
    return data.digits()


def test_standard_matches_sklearn_including_constant_pixels(digits):
    fitted = scaling.fit_standard(digits.x_train)
    ref = StandardScaler().fit(digits.x_train.numpy())
    assert (digits.x_train.std(0) == 0).any()  # digits has pixels that are always 0
    for x in (digits.x_train, digits.x_test):
        torch.testing.assert_close(fitted(x), torch.tensor(ref.transform(x.numpy())), atol=1e-5,
                                   rtol=1e-5, check_dtype=False)
    assert fitted(digits.x_train).dtype == torch.float32


def test_standardized_training_data_has_zero_mean_unit_std():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 4, generator=gen, dtype=torch.float64) * torch.tensor([1e-3, 1.0, 1e3, 5.0]) + 1e4
    z = scaling.standardize(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-8, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(4, dtype=torch.float64))


def test_float32_statistics_survive_a_large_offset():
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(4096, 3, generator=gen, dtype=torch.float64) + 1e4).float()
    z = scaling.standardize(x)
    assert z.std(0, unbiased=False).sub(1).abs().max().item() < 1e-3


def test_min_max_matches_sklearn_and_maps_onto_the_range(digits):
    fitted = scaling.fit_min_max(digits.x_train)
    ref = MinMaxScaler().fit(digits.x_train.numpy())
    torch.testing.assert_close(fitted(digits.x_test), torch.tensor(ref.transform(digits.x_test.numpy())),
                               atol=1e-5, rtol=1e-5, check_dtype=False)
    z = scaling.fit_min_max(digits.x_train, -1.0, 1.0)(digits.x_train)
    assert z.min().item() == pytest.approx(-1.0) and z.max().item() == pytest.approx(1.0)


def test_inverse_undoes_the_scaling():
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 7 + 2
    for fitted in (scaling.fit_standard(x), scaling.fit_min_max(x)):
        torch.testing.assert_close(fitted.inverse(fitted(x)), x)


def test_whitening_gives_identity_covariance():
    gen = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.3, 0.0], [5.0, -2.0, 0.1]], dtype=torch.float64)
    x = torch.randn(500, 3, generator=gen, dtype=torch.float64) @ mix.T + 3
    z = scaling.fit_whitening(x, eps=0.0)(x)
    torch.testing.assert_close(z.T @ z / len(z), torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(z.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    # Standardization alone keeps the correlations.
    s = scaling.standardize(x)
    assert (s.T @ s / len(s) - torch.eye(3, dtype=torch.float64)).abs().max().item() > 0.5


def test_scale_split_fits_on_train_only(digits):
    scaled, fitted = scaling.scale_split(digits, "standard")
    torch.testing.assert_close(fitted.shift, digits.x_train.mean(0))
    assert scaled.x_train.mean(0).abs().max().item() < 1e-5
    assert scaled.x_test.mean(0).abs().max().item() > 0.01  # the test split is not re-centred
    torch.testing.assert_close(scaled.x_test, fitted(digits.x_test))
    assert torch.equal(scaled.y_test, digits.y_test)
    _, whitener = scaling.scale_split(digits, "whitening")
    assert isinstance(whitener, scaling.Whitener)


@pytest.mark.parametrize("call, error, match", [
    (lambda: scaling.fit_standard([[1.0, 2.0]]), TypeError, "torch.Tensor"),
    (lambda: scaling.fit_standard(torch.zeros(5)), ValueError, "shape \\(examples, features\\)"),
    (lambda: scaling.fit_standard(torch.zeros(5, 2, dtype=torch.long)), TypeError, "floating"),
    (lambda: scaling.fit_standard(torch.zeros(1, 2)), ValueError, "at least 2 examples"),
    (lambda: scaling.fit_min_max(torch.zeros(5, 2), 1.0, 0.0), ValueError, "low < high"),
    (lambda: scaling.fit_standard(torch.randn(5, 2))(torch.zeros(5, 3)), ValueError, "\\(examples, 2\\)"),
    (lambda: scaling.fit_whitening(torch.randn(5, 2))(torch.zeros(5, 3)), ValueError, "\\(examples, 2\\)"),
    (lambda: scaling.fit_whitening(torch.randn(5, 2), eps=-1.0), ValueError, "eps"),
    (lambda: scaling.fit_standard(torch.randn(5, 2))([[1.0, 2.0]]), TypeError, "torch.Tensor"),
    (lambda: scaling.fit_min_max(torch.randn(5, 2)).inverse(torch.zeros(5)), ValueError, "\\(examples, 2\\)"),
    (lambda: scaling.scale_split(data.digits(), "robust"), ValueError, "method must be one of"),
])
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
