"""Norm-matched α: closed forms on planted profiles (no forward pass involved)."""

import dataclasses

import pytest
import torch

import commandv_interp as cv
from commandv_interp.adapters import make_intervention
from commandv_interp.converters.alpha import delta_norm_ratios, norm_matched_alpha
from commandv_interp.converters import LinearConverter

D, N, LAYERS = 12, 80, (0, 2)


def _profile(acts, name, fingerprint="fp"):
    return cv.ActivationProfile(acts, name, f"hash-{name}", 3, acts[0].shape[1], "float32", fingerprint)


@pytest.fixture()
def planted():
    """Recipient states are the donor's, rotated by Q and scaled by s: h_R = s · Q h_D."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D))
    s = 3.0
    donor = {layer: torch.randn(N, D) for layer in range(3)}
    recipient = {layer: s * h @ q.T for layer, h in donor.items()}
    ivs = {}
    for layer in LAYERS:
        iv = make_intervention("nodireft", D, 4)
        with torch.no_grad():
            for p in iv.parameters():
                p.add_(0.3 * torch.randn_like(p))
        ivs[layer] = iv.requires_grad_(False)
    pd_, pr = _profile(donor, "donor"), _profile(recipient, "recipient")
    conv = cv.fit_converters(pd_, pr, cv.match_layers(pd_, pr, method="depth", donor_layers=list(LAYERS)),
                             method="pinv")
    return cv.Adapter(ivs), conv, pd_, pr


def test_exact_converters_give_alpha_one(planted):
    adapter, conv, pd_, pr = planted
    frame = delta_norm_ratios(adapter, conv, pd_, pr)
    assert list(frame.donor_layer) == list(LAYERS)
    torch.testing.assert_close(torch.tensor(frame.pasted_to_residual.values),
                               torch.tensor(frame.donor_to_residual.values), rtol=1e-4, atol=0)
    assert norm_matched_alpha(adapter, conv, pd_, pr) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("c", [0.1, 7.0])
def test_mis_scaled_back_map_is_undone(planted, c):
    """A back map c times too large makes every pasted delta c times too large: α = 1/c restores it."""
    adapter, conv, pd_, pr = planted
    pairs = tuple(dataclasses.replace(p, to_recipient=LinearConverter(c * p.to_recipient.weight)) for p in conv.pairs)
    loud = dataclasses.replace(conv, pairs=pairs)
    alpha = norm_matched_alpha(adapter, loud, pd_, pr)
    assert alpha == pytest.approx(1.0 / c, rel=1e-4)
    ratios = delta_norm_ratios(adapter, loud, pd_, pr)
    assert (alpha * ratios.pasted_to_residual).mean() == pytest.approx(ratios.donor_to_residual.mean(), rel=1e-4)


def test_adapter_left_unchanged(planted):
    adapter, conv, pd_, pr = planted
    adapter.interventions[0].to(dtype=torch.float64)
    before = {k: v.clone() for k, v in adapter.interventions[0].state_dict().items()}
    norm_matched_alpha(adapter, conv, pd_, pr)
    after = adapter.interventions[0].state_dict()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())
    assert adapter.interventions[0].learned_source.weight.dtype == torch.float64


def test_refuses_mismatched_profiles(planted):
    adapter, conv, pd_, pr = planted
    other = _profile(pr.activations, "recipient", fingerprint="other")
    with pytest.raises(ValueError, match="different prompts"):
        norm_matched_alpha(adapter, conv, pd_, other)
    stranger = _profile(pr.activations, "stranger")
    with pytest.raises(ValueError, match="config hash"):
        norm_matched_alpha(adapter, conv, pd_, stranger)


def test_refuses_zero_delta(planted):
    adapter, conv, pd_, pr = planted
    pairs = tuple(dataclasses.replace(p, to_recipient=LinearConverter(0 * p.to_recipient.weight)) for p in conv.pairs)
    with pytest.raises(ValueError, match="zero"):
        norm_matched_alpha(adapter, dataclasses.replace(conv, pairs=pairs), pd_, pr)
