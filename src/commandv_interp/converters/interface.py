"""Consumes two profiles, a :class:`LayerMap` and a donor :class:`Adapter`,
produces :class:`Converters` fitted to the adapter's *interface* (``method="interface"``).

A linear-source adapter (NodiReFT, DiReFT, linear LoReFT/NoReFT) touches the residual stream through two
``r``-dimensional interfaces only: it *reads* ``z = W h + b`` (``r`` numbers) and *writes* ``δ = act(z) P``, a
vector in the row space of ``P`` (``r × d``). A paste needs the converters right on those ``2r`` directions and
nowhere else, so instead of mapping all ``d_R ↔ d_D`` dimensions (``fit_converters``) this fits two small
regressions over the profile prompts:

- **read** (``to_donor``): regress the donor's read coordinates ``Z = H_D Wᵀ`` on the recipient states ``H_R``
  (centered ridge, λ from held-out error *on Z*): ``Z ≈ H_R Mᵀ + c``, then undo the regression's shrinkage towards
  the mean (``calibrated``: the adapter must see how prompts *differ*, e.g. harmful vs benign, at the donor's
  scale, not a damped version that makes it treat every prompt alike). Stored as ``to_donor(h) = W⁺(M h + c) +
  (I − W⁺W) μ_D``, so that ``W · to_donor(h_R) = M h_R + c`` exactly.
- **write** (``to_recipient``): regress the recipient states on the donor's coordinates along ``P``,
  ``C = H_D P⁺`` (``r`` regressors): ``H_R ≈ C Gᵀ + μ``. Stored as ``to_recipient(h) = G (P⁺)ᵀ h + μ``, so a donor
  delta ``δ_D = u P`` maps to ``G u``: how recipient states move, on the profile prompts, when the donor's state
  moves one unit along the adapter's write directions.

Why it helps. The paper's backward map ``pinv(A_D) A_R`` regresses on all ``d_D`` donor dimensions; directions of
tiny variance (the last prompt token is the same token on every prompt) get huge coefficients, and the pasted
delta ``δ_D`` need not avoid them, so the paste comes out too large (7–55× the residual on the zoo) and points
nowhere useful. The write regression has ``r`` well-spread regressors (``P`` was trained to move the state where
it matters) and is an ordinary forward regression of ``H_R``: it cannot amplify a weak direction. Its cost is
``O(N r (d_R + d_D))`` after profiling, and it is determined as soon as ``N`` exceeds ``r``: small profile sets
suffice.

The converters are tied to one adapter: they carry its digest and ``paste``/``compile_paste`` refuse any other.
"""

from __future__ import annotations

import torch

from commandv_interp.adapters import Adapter
from commandv_interp.adapters.linear_form import linear_parts
from commandv_interp.converters.artifact import Converters, LayerConverter, LinearConverter, provenance_extra
from commandv_interp.converters.regression import fit_held_out, holdout_split
from commandv_interp.correspondence import LayerMap
from commandv_interp.profiles import ActivationProfile

__all__ = ["fit_interface_converters", "MAX_STRETCH"]


MAX_STRETCH = 4.0  # the calibrated read amplifies a held-out difference at most this much


def _destretch(z: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
    """``S = K⁻¹`` for the held-out attenuation ``K`` (the slope of the predictions ``ẑ`` on the truth ``z``, r × r):
    a regression's predictions shrink towards the mean (``K < I``), so the differences between prompts that the
    adapter reads come out too small; ``S ẑ`` has slope one. ``K``'s singular values are floored at
    ``1 / MAX_STRETCH`` so that a read with no signal (``K ≈ 0``) is not blown up into noise."""
    zc, hc = z - z.mean(0), z_hat - z_hat.mean(0)
    cov_z = zc.T @ zc
    guard = 1e-9 * float(torch.trace(cov_z)) / cov_z.shape[0] + 1e-30
    k = (hc.T @ zc) @ torch.linalg.inv(cov_z + guard * torch.eye(cov_z.shape[0], dtype=cov_z.dtype))
    u, sig, vh = torch.linalg.svd(k)
    return vh.T @ torch.diag(1.0 / sig.clamp_min(1.0 / MAX_STRETCH)) @ u.T


def fit_interface_converters(
    donor_profile: ActivationProfile,
    recipient_profile: ActivationProfile,
    layer_map: LayerMap,
    adapter: Adapter,
    holdout: float = 0.2,
    ridge_grid: tuple[float, ...] | None = None,
    calibrated: bool = True,
) -> Converters:
    """Converters for pasting ``adapter`` only: fitted on its read and write directions (see the module doc).

    Args:
        donor_profile, recipient_profile: profiles over the same prompts (fingerprints must match); the donor is the
            adapter's model.
        layer_map: which recipient layer each donor layer maps to.
        adapter: the donor adapter the converters will paste (linear-source kinds; its layers must be mapped).
        holdout: fraction of prompts held out to pick λ and score each regression (then refit on all).
        ridge_grid: λ candidates as multiples of the mean eigenvalue of ``XᵀX`` (default: a log grid).
        calibrated: undo the read regression's shrinkage towards the mean (``S = K⁻¹``, ``K`` the held-out slope of
            the predictions on the truth, at most ``MAX_STRETCH``), so that differences between prompts reach the
            adapter at their donor size.

    Returns:
        :class:`Converters` with ``method="interface"``; ``fit_scores`` hold held-out R²/rel-MSE/cosine of the
        read regression (``to_donor``, on the ``r`` read coordinates) and the write regression (``to_recipient``,
        recipient states from the ``r`` write coordinates); ``adapter_digest`` names the adapter.

    Raises:
        ValueError: mismatched profiles, an adapter of another width, a donor layer missing from the map, or an
            adapter whose source is not linear (non-linear LoReFT/NoReFT: use a linear method of :func:`fit_converters`).
    """
    donor, recipient = donor_profile, recipient_profile
    donor.check_paired_with(recipient)
    mapped = dict(layer_map.pairs)
    missing = [layer for layer in adapter.layers if layer not in mapped]
    if missing:
        raise ValueError(f"the layer map has no recipient layer for donor layers {missing}; match the adapter's "
                         f"layers (match_layers(..., donor_layers=adapter.layers))")
    adapter.check_model(f"the donor profile's model {donor.model_name!r}", donor.n_layers, donor.d_model,
                        donor.config_hash)
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout!r}")
    train, test = holdout_split(donor.n_prompts, holdout)
    pairs = []
    for donor_layer in adapter.layers:
        recipient_layer = mapped[donor_layer]
        w, _, p = linear_parts(adapter.interventions[donor_layer])
        h_d, h_r = donor[donor_layer].double(), recipient[recipient_layer].double()
        w_pinv, p_pinv = torch.linalg.pinv(w), torch.linalg.pinv(p)  # d_D × r each
        z = h_d @ w.T
        read, read_report, z_hat = fit_held_out(h_r, z, "affine", train, test, ridge_grid)
        write, write_report, _ = fit_held_out(h_d @ p_pinv, h_r, "affine", train, test, ridge_grid)
        m, c = (read.left if read.right is None else read.left @ read.right), read.bias  # r × d_R, r
        if calibrated:
            s = _destretch(z[test], z_hat)
            m, c = s @ m, c @ s.T + z.mean(0) @ (torch.eye(len(s), dtype=s.dtype) - s).T
            read_report["stretch"] = float(torch.linalg.matrix_norm(s, 2))  # the largest amplification
        outside = h_d.mean(0) - (h_d.mean(0) @ w.T) @ w_pinv.T  # (I − W⁺W) μ_D: the mean off the read directions
        to_donor = LinearConverter(w_pinv, m, c @ w_pinv.T + outside)
        g = write.left if write.right is None else write.left @ write.right  # d_R × r
        to_recipient = LinearConverter(g, p_pinv.T.contiguous(), write.bias)
        pairs.append(LayerConverter(donor_layer, recipient_layer, to_donor, to_recipient,
                                    {"to_donor": read_report, "to_recipient": write_report, "space": "interface"}))
    return Converters(tuple(pairs), "interface", donor.model_name, recipient.model_name, donor.config_hash,
                      recipient.config_hash, donor.d_model, recipient.d_model, donor.prompts_fingerprint,
                      {"layer_map_method": layer_map.method, "n_prompts": donor.n_prompts, "rank": adapter.rank}
                      | provenance_extra(donor, recipient),
                      adapter_digest=adapter.digest())
