"""Consumes a recipient, a donor adapter and converters, produces causal layer attribution
and null baselines (tidy DataFrames), each scored by the behavior logit difference and, optionally, a behavior
metric computed from generations.

**Attribution** pastes subsets of the adapter's layer pairs: ``single`` (one pair only), ``leave_one_out`` (all
but one), ``cumulative_first`` (pairs ``1..k`` from the first layer) and ``cumulative_last`` (pairs ``k..n`` from the
last), next to ``none`` (the recipient alone) and ``all`` (the full paste).

**Null baselines**, reported beside the real paste: ``random_delta`` (at each pasted layer and position, a random
direction with the norm of the real pasted delta), ``shuffled_converters`` (converters fitted on a shuffled prompt
pairing of the same profiles) and ``other_behavior:<name>`` (another behavior's adapter pasted through the same
converters).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import pandas as pd
import torch

from commandv_interp.access import ModelAccess, open_model
from commandv_interp.adapters import Adapter
from commandv_interp.adapters.layer_subsets import ATTRIBUTION_MODES, layer_subsets
from commandv_interp.analysis.downstream import logit_difference
from commandv_interp.converters import Converters, fit_converters
from commandv_interp.correspondence import LayerMap
from commandv_interp.adapters.edits import DeltaFn, delta_edit
from commandv_interp.converters.transport import pasted_deltas
from commandv_interp.paste import apply_adapter, paste
from commandv_interp.pipeline.agreement import donor_targets
from commandv_interp.pipeline.applied import subset_attribution
from commandv_interp.pipeline.candidates import Candidate
from commandv_interp.profiles import ActivationProfile

__all__ = ["BehaviorScore", "agreement_attribution", "layer_subsets", "layer_attribution", "random_delta_paste", "shuffled_converters",
           "null_baselines", "ATTRIBUTION_MODES"]

BehaviorScore = Callable[[ModelAccess], float]
"""Scores the model under whatever edits are active (e.g. a refusal rate from greedy generations)."""
COLUMNS = ["condition", "layers", "n_pairs", "metric", "value", "split"]


def _scores(access: ModelAccess, prompts: Sequence[str], contrast: tuple[str, str] | None,
            behavior_score: BehaviorScore | None, batch_size: int) -> dict[str, float]:
    out = {}
    if contrast is not None:
        out["logit_diff"] = float(logit_difference(access, prompts, *contrast, batch_size=batch_size).mean())
    if behavior_score is not None:
        out["behavior"] = float(behavior_score(access))
    return out


def _rows(condition: str, layers: Sequence[int], values: dict[str, float], split: str) -> list[dict]:
    label = ",".join(map(str, layers))
    return [{"condition": condition, "layers": label, "n_pairs": len(layers), "metric": k, "value": v,
             "split": split} for k, v in values.items()]


def _check_scorers(contrast: tuple[str, str] | None, behavior_score: BehaviorScore | None) -> None:
    if contrast is None and behavior_score is None:
        raise ValueError("pass contrast=(positive_word, negative_word) and/or behavior_score to score the runs")


def layer_attribution(recipient: ModelAccess | object, adapter: Adapter, converters: Converters | None,
                      prompts: Sequence[str], contrast: tuple[str, str] | None = None,
                      behavior_score: BehaviorScore | None = None, modes: Sequence[str] = ATTRIBUTION_MODES,
                      split: str = "test", positions: str = "last", alpha: float = 1.0,
                      batch_size: int = 32) -> pd.DataFrame:
    """Paste subsets of the adapter's layers and score each run.

    With ``converters=None`` the subsets are applied natively to ``recipient``, which must then be the adapter's
    own model: which of the donor's adapter layers carry the behavior, alone and together. A behavior that only
    appears with several layers (an adapter that is a circuit) is the case for
    :func:`~commandv_interp.converters.fit_chained_converters`.

    Returns:
        Tidy rows ``condition (none|all|<mode>), layers ("0,2"), n_pairs, metric, value, split``.
    """
    _check_scorers(contrast, behavior_score)
    access = open_model(recipient)
    if converters is None and adapter.d_model != access.d_model:
        raise ValueError(f"converters=None applies the adapter natively, but it has d_model={adapter.d_model} and "
                         f"{access.name!r} has {access.d_model}; pass its own model, or converters to paste it")
    rows = _rows("none", (), _scores(access, prompts, contrast, behavior_score, batch_size), split)
    for mode, layers in [("all", tuple(adapter.layers))] + layer_subsets(adapter.layers, modes):
        sub = adapter.restricted(layers)
        edit = (apply_adapter(access, sub, positions, alpha) if converters is None
                else paste(access, sub, converters.restricted(adapter, layers), positions, alpha))
        with edit:
            rows += _rows(mode, layers, _scores(access, prompts, contrast, behavior_score, batch_size), split)
    return pd.DataFrame(rows, columns=COLUMNS)


def _random_like(fn: DeltaFn, generator: torch.Generator) -> DeltaFn:
    def delta(h: torch.Tensor) -> torch.Tensor:
        real = fn(h)
        noise = torch.randn(real.shape, generator=generator, dtype=torch.float64).to(real)
        return noise / noise.norm(dim=-1, keepdim=True).clamp_min(1e-30) * real.norm(dim=-1, keepdim=True)

    return delta


@contextlib.contextmanager
def random_delta_paste(recipient: ModelAccess | object, adapter: Adapter, converters: Converters,
                       positions: str = "last", alpha: float = 1.0, seed: int = 0) -> Iterator[ModelAccess]:
    """Like :func:`~commandv_interp.paste.paste`, but every pasted delta is replaced by a random direction of the
    same norm (per position): the null that keeps the edit's size and location but not its direction."""
    access = open_model(recipient)
    generator = torch.Generator().manual_seed(seed)
    per_layer = pasted_deltas(access, adapter, converters)
    edits = {layer: delta_edit([_random_like(fn, generator) for fn in fns], positions, None, alpha)
             for layer, fns in per_layer.items()}
    with access.edited(edits):
        yield access


def shuffled_converters(donor: ActivationProfile, recipient: ActivationProfile, converters: Converters,
                        seed: int = 0, adapter: Adapter | None = None) -> Converters:
    """Converters of the same method and layer map, fitted after shuffling which donor row pairs with which
    recipient row: the null that keeps both activation distributions but breaks the prompt correspondence.
    ``interface`` converters are refitted for ``adapter`` (required for them)."""
    perm = torch.randperm(donor.n_prompts, generator=torch.Generator().manual_seed(seed))
    shuffled = donor.subset(perm, fingerprint=donor.prompts_fingerprint)
    layer_map = LayerMap(tuple(sorted(converters.layer_map().items())), tuple(float("nan") for _ in converters),
                         "given")
    if converters.method == "interface":
        if adapter is None:
            raise ValueError("interface converters are fitted to one adapter: pass adapter= to refit them shuffled")
    return fit_converters(shuffled, recipient, layer_map, converters.method, adapter)


def null_baselines(recipient: ModelAccess | object, adapter: Adapter, converters: Converters,
                   prompts: Sequence[str], contrast: tuple[str, str] | None = None,
                   behavior_score: BehaviorScore | None = None,
                   profiles: tuple[ActivationProfile, ActivationProfile] | None = None,
                   other_adapters: dict[str, Adapter] | None = None, split: str = "test", positions: str = "last",
                   alpha: float = 1.0, seed: int = 0, batch_size: int = 32) -> pd.DataFrame:
    """The real paste beside its null baselines, all scored the same way.

    Args:
        profiles: ``(donor_profile, recipient_profile)`` the converters were fitted on (for
            ``shuffled_converters``; skipped when ``None``).
        other_adapters: other behaviors' adapters of the same donor, by name.

    Returns:
        Tidy rows ``condition (none|paste|random_delta|shuffled_converters|other_behavior:<name>), layers,
        n_pairs, metric, value, split``.
    """
    _check_scorers(contrast, behavior_score)
    access = open_model(recipient)
    runs: list[tuple[str, Adapter, contextlib.AbstractContextManager]] = [
        ("none", adapter, contextlib.nullcontext()),
        ("paste", adapter, paste(access, adapter, converters, positions, alpha)),
        ("random_delta", adapter, random_delta_paste(access, adapter, converters, positions, alpha, seed))]
    if profiles is not None:
        runs.append(("shuffled_converters", adapter,
                     paste(access, adapter, shuffled_converters(*profiles, converters, seed, adapter), positions, alpha)))
    for name, other in (other_adapters or {}).items():
        runs.append((f"other_behavior:{name}", other, paste(access, other, converters, positions, alpha)))
    rows = []
    for condition, used, ctx in runs:
        with ctx:
            values = _scores(access, prompts, contrast, behavior_score, batch_size)
        rows += _rows(condition, () if condition == "none" else tuple(used.layers), values, split)
    return pd.DataFrame(rows, columns=COLUMNS)


def agreement_attribution(donor: ModelAccess, recipient: ModelAccess, adapter: Adapter, converters: Converters,
                          prompts: Sequence[str], alpha: float = 1.0, modes: Sequence[str] = ATTRIBUTION_MODES,
                          max_new_tokens: int = 8) -> pd.DataFrame:
    """Label-free layer attribution: paste subsets of the adapter's layers and score each by the donor-agreement
    criterion of :mod:`~commandv_interp.pipeline.agreement` (how far the recipient's greedy answers follow the
    donor+adapter's, balanced over prompts the adapter changes and prompts it leaves alone).

    Returns:
        Tidy rows ``condition (none|all|<mode>), layers, n_pairs, metric (criterion|preference|agree_changed|
        agree_unchanged), value, split ("agreement")``.
    """
    donor, recipient = open_model(donor), open_model(recipient)
    targets = donor_targets(donor, adapter, prompts, max_new_tokens)
    converters.check_adapter(adapter)
    return subset_attribution(recipient, targets, Candidate("paste", 2, converters.method, "-", adapter, converters),
                              modes, alpha)
