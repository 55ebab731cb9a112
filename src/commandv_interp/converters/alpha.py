"""Consumes a donor :class:`Adapter`, :class:`Converters` and both models' profiles,
produces the paste scale ``α``.

The pasted delta is ``δ_R = to_recipient.linear(δ(to_donor(h_R)))``. When the converters stretch or shrink
directions, ``‖δ_R‖`` relative to the recipient's residual ``‖h_R‖`` can end up far from the donor's own
``‖δ_D‖ / ‖h_D‖``: the same edit is then too loud (it breaks the recipient) or too quiet (nothing changes).
The norm-matched ``α`` restores the donor's relative size::

    α = mean_l mean_i ‖δ_D‖/‖h_D‖  ÷  mean_l mean_i ‖δ_R‖/‖h_R‖

over the adapter's donor layers ``l`` and the profile prompts ``i`` (the unedited last-token states the
converters were fitted on). It needs no forward pass: profiles, converters and the adapter suffice.
"""

from __future__ import annotations

import copy

import pandas as pd
import torch

from commandv_interp.adapters import Adapter
from commandv_interp.converters.artifact import Converters
from commandv_interp.metrics import norm_ratio
from commandv_interp.profiles import ActivationProfile

__all__ = ["delta_norm_ratios", "norm_matched_alpha"]

def delta_norm_ratios(
    adapter: Adapter, converters: Converters, donor_profile: ActivationProfile, recipient_profile: ActivationProfile,
) -> pd.DataFrame:
    """Per donor layer: mean ``‖δ_D‖/‖h_D‖`` (donor with its adapter) and ``‖δ_R‖/‖h_R‖`` (the paste at α = 1).

    Returns:
        Columns ``donor_layer, recipient_layer, donor_to_residual, pasted_to_residual, n_prompts``.
    """
    converters.check_adapter(adapter)
    converters.check_profiles(donor_profile, recipient_profile)
    missing = [layer for layer in adapter.layers if layer not in donor_profile.activations]
    if missing:
        raise ValueError(f"the donor profile lacks the adapter's layers {missing!r}; profile all donor layers")
    rows = []
    for donor_layer, iv in sorted(adapter.interventions.items()):
        pair = converters.for_donor_layer(donor_layer)
        h_d = donor_profile[donor_layer].float()
        h_r = recipient_profile[pair.recipient_layer].float()
        with torch.no_grad():
            iv32 = copy.deepcopy(iv).to(dtype=torch.float32)  # nn.Module.to works in place: never on the user's
            delta_d = iv32.delta(h_d)
            delta_r = pair.to_recipient.to(dtype=torch.float32).linear(iv32.delta(pair.to_donor.to(dtype=torch.float32)(h_r)))
        rows.append({"donor_layer": donor_layer, "recipient_layer": pair.recipient_layer,
                     "donor_to_residual": norm_ratio(delta_d, h_d), "pasted_to_residual": norm_ratio(delta_r, h_r),
                     "n_prompts": h_d.shape[0]})
    return pd.DataFrame(rows)


def norm_matched_alpha(
    adapter: Adapter, converters: Converters, donor_profile: ActivationProfile, recipient_profile: ActivationProfile,
) -> float:
    """The ``α`` that gives the pasted delta the donor delta's size relative to the residual stream.

    Example:
        >>> alpha = norm_matched_alpha(adapter, converters, donor_profile, recipient_profile)  # doctest: +SKIP
        >>> with paste(recipient, adapter, converters, alpha=alpha): ...  # doctest: +SKIP
    """
    frame = delta_norm_ratios(adapter, converters, donor_profile, recipient_profile)
    pasted = float(frame.pasted_to_residual.mean())
    if not pasted > 1e-12:
        raise ValueError("the pasted delta is zero on every profile prompt (converters or adapter are all zeros); "
                         "norm matching needs a non-zero delta: refit the converters")
    return float(frame.donor_to_residual.mean()) / pasted
