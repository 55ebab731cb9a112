"""Consumes a donor with its adapter, a recipient with the paste and both models' profiles,
produces the downstream effect of the edit, layer by layer and at the output (tidy DataFrame).

At every recipient layer ``l_R`` from the first pasted layer on, the pasted edit's effect on the residual stream
at the last prompt token, ``e_R = h_R(paste) − h_R(clean)``, is compared with the donor adapter's effect at the
corresponding donor layer, ``e_D = h_D(adapter) − h_D(clean)``, carried into recipient space by a linear map fitted
on the profiles (``e_D ↦ e_D Wᵀ``): ``effect_cosine`` and ``effect_norm_ratio`` (‖e_R‖/‖e_D Wᵀ‖), plus
``effect_to_residual_norm`` (‖e_R‖/‖h_R(clean)‖). The corresponding donor layer of ``l_R`` is the last donor layer
the converters map to ``l_R`` if there is one, else the relative-depth layer.

At the output (``donor_layer``/``recipient_layer`` missing): the behavior logit difference
``logit[positive] − logit[negative]`` of the first response token for recipient base, recipient + paste, donor
base and donor + adapter; and, when the two tokenizers have the same vocabulary, the KL divergence and total
variation between the next-token distributions of donor + adapter and recipient + paste.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import pandas as pd
import torch

from commandv_interp.access import ModelAccess, open_model
from commandv_interp.adapters import Adapter
from commandv_interp.analysis.capture import last_logits, last_states, token_id
from commandv_interp.analysis.fidelity import PAIR_COLUMNS
from commandv_interp.metrics import kl_divergence, mean_cosine, norm_ratio, total_variation
from commandv_interp.converters import Converters, LinearConverter
from commandv_interp.correspondence import relative_depth
from commandv_interp.converters.regression import fit_linear, holdout_split
from commandv_interp.paste import apply_adapter, paste
from commandv_interp.profiles import ActivationProfile

__all__ = ["downstream_fidelity", "logit_difference", "effect_layer_pairs"]


def logit_difference(access: ModelAccess, prompts: Sequence[str], positive: str, negative: str,
                     batch_size: int = 32) -> torch.Tensor:
    """Per prompt, ``logit[positive] − logit[negative]`` of the next token (first token of each word), under
    the active edits."""
    pos, neg = token_id(access, positive), token_id(access, negative)
    if pos == neg:
        raise ValueError(f"{positive!r} and {negative!r} start with the same token for {access.name!r}; "
                         "pick contrast words whose first tokens differ")
    logits = last_logits(access, prompts, batch_size)
    return logits[:, pos] - logits[:, neg]


def effect_layer_pairs(converters: Converters, n_donor_layers: int, n_recipient_layers: int) -> list[tuple[int, int]]:
    """``(donor_layer, recipient_layer)`` for every recipient layer from the first pasted one on."""
    mapped: dict[int, int] = {}
    for pair in sorted(converters, key=lambda p: p.donor_layer):
        mapped[pair.recipient_layer] = pair.donor_layer
    first = min(mapped)
    return [(mapped.get(l_r, relative_depth(l_r, n_recipient_layers, n_donor_layers)), l_r)
            for l_r in range(first, n_recipient_layers)]


def _effect_map(donor: ActivationProfile, recipient: ActivationProfile, pair: tuple[int, int],
                method: str) -> LinearConverter:
    x, y = donor[pair[0]], recipient[pair[1]]
    train, test = holdout_split(x.shape[0], 0.2)
    trial = fit_linear(x[train], y[train], method, select_on=(x[test], y[test]))
    fit = fit_linear(x, y, method, fixed_ridge=trial.ridge)
    return LinearConverter(fit.left, fit.right, fit.bias)


def downstream_fidelity(donor: ModelAccess | object, recipient: ModelAccess | object, adapter: Adapter,
                        converters: Converters, prompts: Sequence[str], donor_profile: ActivationProfile,
                        recipient_profile: ActivationProfile, contrast: tuple[str, str] | None = None,
                        split: str = "test", positions: str = "last", alpha: float = 1.0, method: str = "ridge",
                        batch_size: int = 32) -> pd.DataFrame:
    """Layer-by-layer and output-level fidelity of the pasted edit's downstream effect.

    Args:
        donor, recipient: the two models; adapter: the donor's; converters: fitted between them.
        prompts: evaluation prompts (``split`` names them).
        donor_profile, recipient_profile: profiles covering every layer compared (to fit the effect maps).
        contrast: ``(positive, negative)`` first response words for the behavior logit difference, e.g.
            ``("sorry", "sure")`` for refusal.
        method: how effect maps are fitted (``ridge`` by default; ``pinv`` gives the closed form).

    Returns:
        Tidy rows ``donor_layer, recipient_layer, metric, value, split`` (layers missing for output rows).
    """
    donor, recipient = open_model(donor), open_model(recipient)
    pairs = effect_layer_pairs(converters, donor.n_layers, recipient.n_layers)
    d_layers, r_layers = sorted({p[0] for p in pairs}), sorted({p[1] for p in pairs})
    clean_d, clean_r = last_states(donor, prompts, d_layers, batch_size), last_states(recipient, prompts, r_layers,
                                                                                      batch_size)
    with apply_adapter(donor, adapter, positions, alpha):
        edited_d = last_states(donor, prompts, d_layers, batch_size)
    with paste(recipient, adapter, converters, positions, alpha):
        edited_r = last_states(recipient, prompts, r_layers, batch_size)
    rows = []
    for pair in pairs:
        w = _effect_map(donor_profile, recipient_profile, pair, method)
        e_d = w.linear((edited_d[pair[0]] - clean_d[pair[0]]).double())
        e_r = (edited_r[pair[1]] - clean_r[pair[1]]).double()
        values = {"effect_cosine": mean_cosine(e_r, e_d), "effect_norm_ratio": norm_ratio(e_r, e_d),
                  "effect_to_residual_norm": norm_ratio(e_r, clean_r[pair[1]])}
        rows += [{"donor_layer": pair[0], "recipient_layer": pair[1], "metric": k, "value": v, "split": split}
                 for k, v in values.items()]
    rows += [{"donor_layer": None, "recipient_layer": None, "metric": k, "value": v, "split": split}
             for k, v in _output_metrics(donor, recipient, adapter, converters, prompts, contrast, positions,
                                         alpha, batch_size).items()]
    frame = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    return frame.astype({"donor_layer": "Int64", "recipient_layer": "Int64"})


def _output_metrics(donor: ModelAccess, recipient: ModelAccess, adapter: Adapter, converters: Converters,
                    prompts: Sequence[str], contrast: tuple[str, str] | None, positions: str, alpha: float,
                    batch_size: int) -> dict[str, float]:
    out: dict[str, float] = {}
    same_vocab = donor.tokenizer.get_vocab() == recipient.tokenizer.get_vocab()
    if contrast is None and not same_vocab:
        return out
    runs = {}
    for label, model, ctx in (("recipient_base", recipient, contextlib.nullcontext()),
                              ("recipient_paste", recipient, paste(recipient, adapter, converters, positions, alpha)),
                              ("donor_base", donor, contextlib.nullcontext()),
                              ("donor_adapter", donor, apply_adapter(donor, adapter, positions, alpha))):
        with ctx:
            runs[label] = (model, last_logits(model, prompts, batch_size))
    if contrast is not None:
        for label, (model, logits) in runs.items():
            pos, neg = token_id(model, contrast[0]), token_id(model, contrast[1])
            out[f"logit_diff_{label}"] = float((logits[:, pos] - logits[:, neg]).mean())
    if same_vocab:
        donor_logits, pasted = runs["donor_adapter"][1], runs["recipient_paste"][1]
        out["kl_donor_adapter_vs_recipient_paste"] = kl_divergence(donor_logits, pasted)
        out["tv_donor_adapter_vs_recipient_paste"] = total_variation(donor_logits, pasted)
        out["kl_donor_base_vs_recipient_base"] = kl_divergence(runs["donor_base"][1], runs["recipient_base"][1])
    return out
