"""Consumes profiles, converters, a donor adapter and evaluation prompts, produces per-layer
fidelity tables (tidy DataFrames: one row per layer pair × metric, with the prompt split).

Two questions, layer pair by layer pair (``l_D ↦ l_R``):

1. **Converter fidelity** (from the profiles alone): held-out R², relative MSE and cosine of both converters (as
   fitted), round-trip errors ``‖h_R − to_recipient(to_donor(h_R))‖/‖h_R‖`` (and the donor's), the pair's linear
   CKA and each profile's effective rank.
2. **State and delta fidelity** (running both models on evaluation prompts, last prompt token): with ``h_D`` the
   donor's state under its adapter and ``h_R`` the recipient's state under the paste (each *before* the edit at
   that layer), ``ĥ_D = to_donor(h_R)``, the donor's own delta ``δ_D = f(h_D)``, the converted delta ``δ̂ = f(ĥ_D)``
   and the pasted delta ``δ_R = α · to_recipient.linear(δ̂)``:

   ``state_r2``/``state_cosine`` (ĥ_D vs h_D) · ``delta_cosine``/``delta_norm_ratio`` (δ̂ vs δ_D) ·
   ``backward_cosine``/``backward_norm_ratio`` (``to_donor.linear(δ_R/α)`` vs δ̂: how much of the delta survives
   the map back) · ``pasted_to_residual_norm`` (‖δ_R‖/‖h_R‖) beside ``donor_to_residual_norm`` (‖δ_D‖/‖h_D‖).

3. **Contrast fidelity** (same runs, two prompt groups ``a`` and ``b``, e.g. harmful and benign): does the pasted
   adapter see how the groups *differ*? A conditional behavior (refuse harmful, comply benign) lives in the
   difference of the adapter's output between groups, not in its mean; a converter that shrinks differences
   towards the mean makes the adapter treat every prompt alike. ``contrast_ratio``/``contrast_cosine`` compare
   ``mean_a δ̂ − mean_b δ̂`` with the donor's ``mean_a δ_D − mean_b δ_D``; ``mean_delta_ratio`` compares the
   means over both groups; ``contrast_share_donor``/``contrast_share_pasted`` are the contrast's norm over the
   mean delta's norm, in the donor and in the recipient (after the map back, ``δ_R``).

For an identity paste (donor = recipient, identity converters) every fidelity is 1 and every error 0.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pandas as pd
import torch

from commandv_interp.access import ModelAccess, open_model, recorded_states
from commandv_interp.adapters import Adapter
from commandv_interp.metrics import effective_rank, mean_cosine, norm_ratio, r2, relative_error
from commandv_interp.converters import Converters
from commandv_interp.correspondence import LayerMap
from commandv_interp.paste import apply_adapter, paste
from commandv_interp.profiles import ActivationProfile
from commandv_interp.correspondence.similarity import linear_cka

__all__ = ["converter_fidelity", "paste_states", "state_delta_fidelity", "contrast_fidelity", "similarity_frame",
           "PAIR_COLUMNS"]

PAIR_COLUMNS = ["donor_layer", "recipient_layer", "metric", "value", "split"]


def _rows(pair: tuple[int, int], values: dict[str, float], split: str) -> list[dict]:
    return [{"donor_layer": pair[0], "recipient_layer": pair[1], "metric": k, "value": float(v), "split": split}
            for k, v in values.items()]


def converter_fidelity(converters: Converters, donor: ActivationProfile, recipient: ActivationProfile,
                       split: str = "profile") -> pd.DataFrame:
    """Converter fit quality per mapped pair, from the profiles the converters were fitted on.

    Args:
        converters: fitted converters.
        donor, recipient: the profiles (``split`` names their prompt set in the output).

    Returns:
        Tidy rows ``donor_layer, recipient_layer, metric, value, split``.
    """
    if (donor.d_model, recipient.d_model) != (converters.d_donor, converters.d_recipient):
        raise ValueError(f"profiles have widths ({donor.d_model}, {recipient.d_model}) but the converters map "
                         f"({converters.d_donor}, {converters.d_recipient}); pass the profiles they were fitted on")
    rows = []
    for pair in converters:
        h_d, h_r = donor[pair.donor_layer].double(), recipient[pair.recipient_layer].double()
        to_d, to_r = pair.to_donor.to(dtype=torch.float64), pair.to_recipient.to(dtype=torch.float64)
        values = {f"heldout_{k}_{direction}": v for direction, d in pair.fit_scores.items() if isinstance(d, dict)
                  for k, v in d.items() if k in ("r2", "rel_mse", "cosine")}
        values |= {"round_trip_error_recipient": relative_error(to_r(to_d(h_r)), h_r),
                   "round_trip_error_donor": relative_error(to_d(to_r(h_d)), h_d),
                   "cka": linear_cka(h_d, h_r), "effective_rank_donor": effective_rank(h_d),
                   "effective_rank_recipient": effective_rank(h_r)}
        rows += _rows((pair.donor_layer, pair.recipient_layer), values, split)
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def paste_states(donor: ModelAccess | object, recipient: ModelAccess | object, adapter: Adapter,
                 converters: Converters, prompts: Sequence[str], positions: str = "last", alpha: float = 1.0,
                 batch_size: int = 32) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Last-prompt-token states the interventions read: the donor's under its adapter at each adapter layer,
    the recipient's under the paste at each mapped recipient layer (each before the edit at its own layer).

    Returns:
        ``(donor_states, recipient_states)``: dicts layer → ``n × d_model`` float32 tensors.
    """
    donor, recipient = open_model(donor), open_model(recipient)
    r_layers = sorted({converters.for_donor_layer(layer).recipient_layer for layer in adapter.layers})
    return (recorded_states(donor, adapter.layers, prompts, apply_adapter(donor, adapter, positions, alpha),
                            batch_size),
            recorded_states(recipient, r_layers, prompts, paste(recipient, adapter, converters, positions, alpha),
                            batch_size))


def state_delta_fidelity(donor: ModelAccess | object, recipient: ModelAccess | object, adapter: Adapter,
                         converters: Converters, prompts: Sequence[str], split: str = "test",
                         positions: str = "last", alpha: float = 1.0, batch_size: int = 32) -> pd.DataFrame:
    """How well the converted recipient state and the pasted delta reproduce the donor's, per adapter layer.

    Args:
        donor, recipient: the two models.
        adapter: the donor's adapter; converters: fitted between the two.
        prompts: evaluation prompts (``split`` names them in the output).
        positions, alpha: the paste's settings (states are compared at the last prompt token).

    Returns:
        Tidy rows ``donor_layer, recipient_layer, metric, value, split`` (metrics in the module docstring).
    """
    h_donor, h_recipient = paste_states(donor, recipient, adapter, converters, prompts, positions, alpha,
                                        batch_size)
    rows = []
    with torch.no_grad():
        for layer in adapter.layers:
            pair = converters.for_donor_layer(layer)
            iv = copy.deepcopy(adapter.interventions[layer]).double()  # .double() would mutate the adapter
            to_d, to_r = pair.to_donor.to(dtype=torch.float64), pair.to_recipient.to(dtype=torch.float64)
            h_d, h_r = h_donor[layer].double(), h_recipient[pair.recipient_layer].double()
            pred = to_d(h_r)
            delta_d, delta_hat = iv.delta(h_d), iv.delta(pred)
            delta_r = to_r.linear(delta_hat)
            back = to_d.linear(delta_r)
            values = {"state_r2": r2(pred, h_d), "state_cosine": mean_cosine(pred, h_d),
                      "delta_cosine": mean_cosine(delta_hat, delta_d),
                      "delta_norm_ratio": norm_ratio(delta_hat, delta_d),
                      "backward_cosine": mean_cosine(back, delta_hat),
                      "backward_norm_ratio": norm_ratio(back, delta_hat),
                      "pasted_to_residual_norm": norm_ratio(alpha * delta_r, h_r),
                      "donor_to_residual_norm": norm_ratio(alpha * delta_d, h_d)}
            rows += _rows((layer, pair.recipient_layer), values, split)
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def contrast_fidelity(donor: ModelAccess | object, recipient: ModelAccess | object, adapter: Adapter,
                      converters: Converters, group_a: Sequence[str], group_b: Sequence[str], split: str = "test",
                      positions: str = "last", alpha: float = 1.0, batch_size: int = 32) -> pd.DataFrame:
    """How faithfully the paste carries the *difference* the adapter makes between two prompt groups, per layer.

    Args:
        donor, recipient, adapter, converters: as for :func:`state_delta_fidelity`.
        group_a, group_b: two non-empty prompt groups (e.g. harmful and benign requests).

    Returns:
        Tidy rows ``donor_layer, recipient_layer, metric, value, split`` (metrics in the module docstring).
    """
    if not group_a or not group_b:
        raise ValueError(f"both prompt groups need prompts, got {len(group_a)} and {len(group_b)}")
    n_a = len(group_a)
    h_donor, h_recipient = paste_states(donor, recipient, adapter, converters, list(group_a) + list(group_b),
                                        positions, alpha, batch_size)
    rows = []
    with torch.no_grad():
        for layer in adapter.layers:
            pair = converters.for_donor_layer(layer)
            iv = copy.deepcopy(adapter.interventions[layer]).double()
            to_d, to_r = pair.to_donor.to(dtype=torch.float64), pair.to_recipient.to(dtype=torch.float64)
            delta_d = iv.delta(h_donor[layer].double())
            delta_hat = iv.delta(to_d(h_recipient[pair.recipient_layer].double()))
            delta_r = to_r.linear(delta_hat)
            contrast = lambda x: x[:n_a].mean(0) - x[n_a:].mean(0)  # noqa: E731
            c_d, c_hat, c_r = contrast(delta_d), contrast(delta_hat), contrast(delta_r)
            values = {"contrast_ratio": float(c_hat.norm() / c_d.norm().clamp_min(1e-30)),
                      "contrast_cosine": float(torch.nn.functional.cosine_similarity(c_hat, c_d, dim=0)),
                      "mean_delta_ratio": float(delta_hat.mean(0).norm() / delta_d.mean(0).norm().clamp_min(1e-30)),
                      "contrast_share_donor": float(c_d.norm() / delta_d.mean(0).norm().clamp_min(1e-30)),
                      "contrast_share_pasted": float(c_r.norm() / delta_r.mean(0).norm().clamp_min(1e-30))}
            rows += _rows((layer, pair.recipient_layer), values, split)
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def similarity_frame(layer_map: LayerMap) -> pd.DataFrame:
    """The layer map's similarity matrix as tidy rows ``donor_layer, recipient_layer, similarity, chosen``.

    Raises:
        ValueError: if the map was built without a similarity matrix.
    """
    if layer_map.similarity is None:
        raise ValueError("this LayerMap has no similarity matrix; build it with match_layers(...) from profiles")
    chosen = set(layer_map.pairs)
    sim = layer_map.similarity
    return pd.DataFrame([{"donor_layer": d, "recipient_layer": r, "similarity": float(sim[i, j]),
                          "chosen": (d, r) in chosen, "metric": layer_map.metric}
                         for i, d in enumerate(layer_map.donor_layers) for j, r in enumerate(layer_map.recipient_layers)])
