import pytest
import torch

from conftest import assert_close

import commandv_interp as cv
from commandv_interp.converters import LinearConverter


def _profile(acts, fp="fp"):
    d = next(iter(acts.values())).shape[1]
    return cv.ActivationProfile(acts, "m", "h", len(acts), d, "float32", fp)


def _planted(n=200, d_r=12, d_d=8, bias=False):
    a_r = torch.randn(n, d_r, dtype=torch.float64)
    w = torch.randn(d_d, d_r, dtype=torch.float64)
    b = torch.randn(d_d, dtype=torch.float64) if bias else 0
    a_d = a_r @ w.T + b
    return _profile({0: a_d.float()}), _profile({0: a_r.float()}), w, b


@pytest.mark.parametrize("method", ["pinv", "ridge", "affine"])
def test_recovers_planted_map(method):
    donor, recipient, w, _ = _planted()
    lm = cv.match_layers(donor, recipient, method="depth")
    conv = cv.fit_converters(donor, recipient, lm, method=method, ridge_grid=(1e-9,))
    pair = conv.for_donor_layer(0)
    assert_close(pair.to_donor.weight, w, atol=1e-3, rtol=1e-3)
    assert pair.fit_scores["to_donor"]["r2"] > 0.999


def test_affine_recovers_bias():
    donor, recipient, w, b = _planted(bias=True)
    conv = cv.fit_converters(donor, recipient, cv.match_layers(donor, recipient), method="affine",
                             ridge_grid=(1e-9,))
    assert_close(conv.pairs[0].to_donor.bias, b, atol=1e-3, rtol=1e-3)


def test_pinv_equals_closed_form_and_is_factored_when_n_small():
    a_d, a_r = torch.randn(4, 10), torch.randn(4, 14)
    donor, recipient = _profile({0: a_d}), _profile({0: a_r})
    conv = cv.fit_converters(donor, recipient, cv.match_layers(donor, recipient), method="pinv")
    pair = conv.pairs[0]
    expected_to_donor = (torch.linalg.pinv(a_r.double()) @ a_d.double()).T
    expected_to_recipient = (torch.linalg.pinv(a_d.double()) @ a_r.double()).T
    assert_close(pair.to_donor.weight, expected_to_donor, atol=1e-8, rtol=1e-6)
    assert_close(pair.to_recipient.weight, expected_to_recipient, atol=1e-8, rtol=1e-6)
    assert pair.to_donor.right is not None and pair.to_donor.left.shape == (10, 4)  # 4·(10+14) < 10·14 numbers
    six = cv.fit_converters(_profile({0: torch.randn(6, 10)}), _profile({0: torch.randn(6, 14)}),
                            cv.match_layers(donor, recipient), method="pinv")
    assert six.pairs[0].to_donor.right is None  # 6·(10+14) ≥ 10·14: dense is smaller


def test_procrustes_recovers_scaled_rotation():
    x = torch.randn(100, 6, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    donor, recipient = _profile({0: (3 * x @ q.T + 1).float()}), _profile({0: x.float()})
    conv = cv.fit_converters(donor, recipient, cv.match_layers(donor, recipient), method="procrustes")
    assert_close(conv.pairs[0].to_donor.weight, 3 * q, atol=1e-4, rtol=1e-4)


def test_fingerprint_refusal_names_both():
    donor = _profile({0: torch.randn(10, 3)}, fp="donorfp")
    recipient = _profile({0: torch.randn(10, 3)}, fp="recipfp")
    lm = cv.match_layers(donor, donor)
    with pytest.raises(ValueError, match="donorfp.*recipfp"):
        cv.fit_converters(donor, recipient, lm)


def test_save_load_round_trip(tmp_path):
    donor, recipient, _, _ = _planted(n=50)
    conv = cv.fit_converters(donor, recipient, cv.match_layers(donor, recipient), method="ridge")
    again = cv.Converters.load(conv.save(tmp_path / "c.safetensors"))
    assert again.method == "ridge" and again.pairs[0].fit_scores == conv.pairs[0].fit_scores
    for a, b in zip(conv.pairs, again.pairs):  # stored in float32, part by part (the factored form is kept)
        for part in ("left", "right", "bias"):
            fitted, stored = getattr(a.to_donor, part), getattr(b.to_donor, part)
            assert (fitted is None and stored is None) or torch.equal(stored, fitted.float())
    assert set(conv.scores_frame().columns) == {"donor_layer", "recipient_layer", "direction", "metric", "value"}


def test_linear_converter_checks_width():
    conv = LinearConverter(torch.randn(3, 4))
    with pytest.raises(ValueError, match="width 4"):
        conv(torch.randn(2, 5))


def test_ridge_choice_at_the_grid_edge_extends_the_grid():
    """Pure noise targets: the held-out error falls with λ all the way, so the choice must leave the grid's top."""
    from commandv_interp.converters.regression import DEFAULT_RIDGE_GRID, GRID_EXTENSIONS, fit_linear

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 20, generator=g), torch.randn(60, 5, generator=g)
    fit = fit_linear(x[:40], y[:40], "ridge", select_on=(x[40:], y[40:]))
    assert max(DEFAULT_RIDGE_GRID) < fit.ridge <= max(DEFAULT_RIDGE_GRID) * 10 ** GRID_EXTENSIONS
    signal = x @ torch.randn(20, 5, generator=g)  # noiseless: the smallest λ wins, and the grid extends downwards
    fit = fit_linear(x[:40], signal[:40], "ridge", select_on=(x[40:], signal[40:]))
    assert fit.ridge < min(DEFAULT_RIDGE_GRID)


@pytest.mark.parametrize("grid", [(float("nan"),), (-1.0, 0.1), (), (float("inf"),)])
def test_bad_ridge_grids_are_refused(grid):
    from commandv_interp.converters.regression import fit_linear

    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="ridge"):
        fit_linear(x, x, "ridge", ridge_grid=grid, select_on=(x, x))
