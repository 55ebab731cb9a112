"""Adapter-aware (interface) converters: closed forms on planted data, pairing checks, and pastes on real models."""

import pytest
import torch

from conftest import assert_close, random_adapter, random_prompts

import commandv_interp as cv
from commandv_interp.converters.interface import fit_interface_converters
from commandv_interp.adapters.linear_form import linear_parts
from commandv_interp.converters.interface import MAX_STRETCH


def _profile(acts, name="m", fp="fp"):
    d = next(iter(acts.values())).shape[1]
    return cv.ActivationProfile(acts, name, f"hash-{name}", len(acts), d, "float32", fp)


def _whitened(n, d, seed):
    """n × d states whose sample covariance is exactly the identity (centered, orthonormal columns · √(n−1))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(0))
    return q * (n - 1) ** 0.5


def _rotated_pair(n=400, d=10, seed=0):
    """Donor states with identity covariance and a recipient that is the same states in a rotated, shifted basis."""
    g = torch.Generator().manual_seed(seed + 1)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    mu_d, mu_r = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    h_d = _whitened(n, d, seed) + mu_d
    h_r = (h_d - mu_d) @ q.T + mu_r
    donor, recipient = _profile({0: h_d.float()}, "donor"), _profile({0: h_r.float()}, "recipient")
    return donor, recipient, q


def test_planted_rotation_gives_the_exact_read_and_write():
    """h_R = Q (h_D − μ_D) + μ_R with white h_D: the read regression recovers W h_D and a donor delta u P maps to
    Q Pᵀ u, so the pasted delta equals Q · (the donor's own delta)."""
    donor, recipient, q = _rotated_pair()
    adapter = random_adapter(10, layers=(0,), rank=3, seed=4)
    conv = fit_interface_converters(donor, recipient, cv.match_layers(donor, recipient), adapter, ridge_grid=(1e-10,))
    pair = conv.for_donor_layer(0)
    iv = adapter.interventions[0]
    w, b, p = linear_parts(iv)
    h_d, h_r = donor[0].double(), recipient[0].double()
    assert_close(pair.to_donor(h_r) @ w.T, h_d @ w.T, atol=1e-4, rtol=1e-4)
    u = torch.randn(5, 3, dtype=torch.float64)
    assert_close(pair.to_recipient.linear(u @ p), (u @ p) @ q.T, atol=1e-4, rtol=1e-4)
    pasted = pair.to_recipient.linear(iv.delta(pair.to_donor(h_r).float()).double())
    assert_close(pasted, iv.delta(h_d.float()).double() @ q.T, atol=1e-3, rtol=1e-3)
    assert pair.fit_scores["to_donor"]["r2"] > 0.999
    assert conv.method == "interface" and conv.adapter_digest == adapter.digest()


def test_write_regression_does_not_amplify_a_weak_donor_direction():
    """A donor direction of tiny variance, unrelated to the recipient, wrecks pinv's backward map (its coefficient
    is 1/σ); the interface write map sees only the adapter's r write coordinates and stays bounded."""
    n, d = 300, 8
    g = torch.Generator().manual_seed(0)
    h_r = torch.randn(n, d, generator=g, dtype=torch.float64)
    h_d = h_r.clone()
    h_d[:, -1] = 1e-4 * torch.randn(n, generator=g, dtype=torch.float64)  # near-constant, pure noise
    donor, recipient = _profile({0: h_d.float()}, "donor"), _profile({0: h_r.float()}, "recipient")
    adapter = random_adapter(d, layers=(0,), rank=2, seed=1)
    lm = cv.match_layers(donor, recipient)
    _, _, p = linear_parts(adapter.interventions[0])
    delta = torch.ones(1, 2, dtype=torch.float64) @ p
    via_pinv = cv.fit_converters(donor, recipient, lm, method="pinv").for_donor_layer(0).to_recipient.linear(delta)
    via_interface = fit_interface_converters(donor, recipient, lm, adapter).for_donor_layer(0).to_recipient.linear(delta)
    assert via_pinv.norm() > 10 * delta.norm()
    assert via_interface.norm() < 3 * delta.norm()


def test_calibrated_read_undoes_the_regression_shrinkage():
    """With noise in the recipient, a regression's predictions of z = W h_D shrink towards the mean (slope < 1 on
    the truth); the calibrated read has slope ≈ 1 on fresh prompts."""
    n, d = 2000, 6
    g = torch.Generator().manual_seed(3)
    h_d = torch.randn(2 * n, d, generator=g, dtype=torch.float64)
    h_r = torch.cat([h_d, torch.randn(2 * n, 4, generator=g, dtype=torch.float64)], 1)
    h_r[:, :d] += 0.8 * torch.randn(2 * n, d, generator=g, dtype=torch.float64)
    adapter = random_adapter(d, layers=(0,), rank=2, seed=2)
    w, _, _ = linear_parts(adapter.interventions[0])
    fit_d, fit_r = _profile({0: h_d[:n].float()}, "donor"), _profile({0: h_r[:n].float()}, "recipient")
    lm = cv.match_layers(fit_d, fit_r)
    z = h_d[n:] @ w.T
    for calibrated, (low, high) in ((False, (0.5, 0.75)), (True, (0.95, 1.05))):
        conv = fit_interface_converters(fit_d, fit_r, lm, adapter, calibrated=calibrated)
        z_hat = conv.for_donor_layer(0).to_donor(h_r[n:]) @ w.T
        slope = ((z_hat - z_hat.mean(0)) * (z - z.mean(0))).sum() / (z - z.mean(0)).pow(2).sum()
        assert low < float(slope) < high, (calibrated, float(slope))
    noise = _profile({0: torch.randn(n, d + 4, generator=g).float()}, "recipient")  # no signal at all
    conv = fit_interface_converters(fit_d, noise, lm, adapter)
    stretch = conv.for_donor_layer(0).fit_scores["to_donor"]["stretch"]
    assert stretch == pytest.approx(MAX_STRETCH)  # floored: a read without signal is not blown up into noise


def test_refuses_other_adapters_mismatched_profiles_and_unmapped_layers(nn_llama, nn_gpt2):
    donor, recipient, _ = _rotated_pair(d=nn_llama.d_model)
    adapter = random_adapter(nn_llama.d_model, layers=(0,), seed=1)
    conv = fit_interface_converters(donor, recipient, cv.match_layers(donor, recipient), adapter)
    other = random_adapter(nn_llama.d_model, layers=(0,), seed=2)
    with pytest.raises(ValueError, match="fitted for the adapter with digest"):
        cv.compile_paste(other, conv)
    with pytest.raises(ValueError, match="no recipient layer for donor layers"):
        fit_interface_converters(donor, recipient, cv.match_layers(donor, recipient), random_adapter(nn_llama.d_model, layers=(0, 1)))
    with pytest.raises(ValueError, match="d_model=16"):
        fit_interface_converters(donor, recipient, cv.match_layers(donor, recipient), random_adapter(16, layers=(0,)))
    shifted = _profile({0: recipient[0]}, "recipient", fp="other-prompts")
    with pytest.raises(ValueError, match="other-prompts|fingerprint"):
        fit_interface_converters(donor, shifted, cv.match_layers(donor, recipient), adapter)


def test_paste_with_interface_converters_equals_its_compiled_form(nn_llama, nn_gpt2):
    """End to end on two architectures: profile, fit on the adapter's interface, paste; the compiled native
    adapter gives the same logits and generations, and the recipient is unchanged afterwards."""
    prompts = random_prompts(64, seed=11)
    adapter = random_adapter(nn_llama.d_model, layers=(0, 2), seed=5)
    pd_, pr = cv.profile(nn_llama, prompts, progress=False), cv.profile(nn_gpt2, prompts, progress=False)
    conv = fit_interface_converters(pd_, pr, cv.match_layers(pd_, pr, donor_layers=adapter.layers), adapter)
    assert conv.scores_frame().direction.unique().tolist() == ["to_donor", "to_recipient"]
    batch = nn_gpt2.encode(random_prompts(4, seed=12), padding_side="left")
    clean = nn_gpt2.forward(batch).detach()
    with cv.paste(nn_gpt2, adapter, conv, alpha=0.5):
        pasted = nn_gpt2.forward(batch).detach()
    with cv.apply_adapter(nn_gpt2, cv.compile_paste(adapter, conv, alpha=0.5)):
        compiled = nn_gpt2.forward(batch).detach()
    mask = batch.attention_mask.bool()
    assert not torch.allclose(pasted[mask], clean[mask], atol=1e-3)
    assert_close(compiled[mask], pasted[mask], atol=1e-4)
    assert torch.equal(nn_gpt2.forward(batch).detach(), clean)


def test_adapter_digest_tracks_weights_not_identity():
    a = random_adapter(12, layers=(0, 2), seed=3)
    b = random_adapter(12, layers=(0, 2), seed=3)
    assert a.digest() == b.digest()
    with torch.no_grad():
        b.interventions[2].learned_source.bias.add_(1e-3)
    assert a.digest() != b.digest()
