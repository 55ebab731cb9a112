"""Stage 6 (zoo): consumes a donor and a recipient zoo model, produces a Command-V transfer (profiles, layer map,
converters, with their cost) and its scores beside the baselines, as tidy rows.

The four rows of a transfer table, per behavior, all on the held-out test prompts without cue:
``recipient_base`` (the recipient alone), ``command_v`` (the donor's adapter pasted into the recipient),
``donor_adapter`` (the donor with its own adapter) and ``recipient_finetune`` (the recipient with an adapter of the
same kind and rank trained directly on it: the zoo's own adapter of the recipient, whose training record gives the
direct-finetune cost).

Cost of Command-V = profiling both models + matching + fitting: wall time and a FLOPs estimate of
``2 · params · tokens`` per forward pass, counting the parameters of the blocks the pass runs (it stops after the
deepest layer it reads), plus ``4 · N · d_in · d_out`` per fitted map. Several derivations may share one
:class:`ProfilePair`; each still counts the profiling it needs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from commandv_interp.access import ModelAccess, forward_flops, open_model
from commandv_interp.adapters import Adapter
from commandv_interp.chaining import fit_chained_interface_converters
from commandv_interp.converters import Converters, fit_converters
from commandv_interp.correspondence import LayerMap, match_layers, relative_depth_map
from commandv_interp.interface import INTERFACE_METHOD, fit_interface_converters
from commandv_interp.paste import apply_adapter, paste
from commandv_interp.profiles import ActivationProfile, profile
from commandv_interp.zoo.catalog import load_adapter, manifest
from commandv_interp.zoo.evaluate import evaluate
from commandv_interp.zoo.world import BEHAVIORS, NEUTRAL_CUES, Behavior, with_cue
from commandv_interp.zoo.world import prompts as world_prompts

__all__ = ["Derivation", "ProfilePair", "derive", "profile_pair", "profile_prompts", "transfer_rows", "CONDITIONS",
           "PROFILE_SETS", "TASK_SIZE"]

CONDITIONS = ("recipient_base", "command_v", "donor_adapter", "recipient_finetune")
PROFILE_SETS = ("profile", "profile+train", "profile+train+cue", "task")
TASK_SIZE = 32  # prompts per form in the behavior-specific ``task`` set


@dataclass(frozen=True)
class ProfilePair:
    """Both models' profiles over the same prompts, and what profiling them cost."""

    donor_profile: ActivationProfile
    recipient_profile: ActivationProfile
    wall_s: float
    flops: float
    n_prompts: int
    prompts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Derivation:
    """Everything Command-V derives from the two models, and what it cost."""

    donor_profile: ActivationProfile | None  # None: a chained depth fit from a prompt list (it needs no profiles)
    recipient_profile: ActivationProfile | None
    layer_map: LayerMap
    converters: Converters
    wall_s: float
    flops: float
    n_prompts: int


def profile_prompts(profile_set: str = "profile", behavior: Behavior | None = None,
                    task_size: int = TASK_SIZE) -> list[str]:
    """The prompts to profile: ``profile`` (generic questions of the world, the paper's LIMA analogue),
    ``profile+train`` (those plus the behaviors' training prompts, without cues), ``profile+train+cue`` (those
    plus every training prompt once more under its behavior's cue and once under a neutral system line, so the
    converters see the directions a cue moves the residual stream along, and that a system line alone does not)
    or ``task`` (small and behavior-specific: ``task_size`` training prompts of ``behavior`` plain, under its cue
    and under a neutral system line, plus ``task_size`` generic ones). Prompts only: no response is used."""
    if profile_set not in PROFILE_SETS:
        raise ValueError(f"profile_set must be one of {PROFILE_SETS}, got {profile_set!r}")
    if profile_set == "task":
        if behavior not in BEHAVIORS:
            raise ValueError(f"the 'task' profile set is per behavior: pass behavior= one of {BEHAVIORS}, "
                             f"got {behavior!r}")
        if task_size < 1:
            raise ValueError(f"task_size must be >= 1, got {task_size!r}")
        train = world_prompts(behavior, "train")[:task_size]
        return list(dict.fromkeys(train + [with_cue(p, behavior) for p in train]
                                  + [f"system : {NEUTRAL_CUES[i % len(NEUTRAL_CUES)]} {p}" for i, p in enumerate(train)]
                                  + world_prompts(behavior, "profile")[:task_size]))
    out = world_prompts("refusal", "profile")
    if profile_set != "profile":
        out += [p for b in BEHAVIORS for p in world_prompts(b, "train")]
    if profile_set == "profile+train+cue":
        for b in BEHAVIORS:
            train = world_prompts(b, "train")
            out += [with_cue(p, b) for p in train]
            out += [f"system : {NEUTRAL_CUES[i % len(NEUTRAL_CUES)]} {p}" for i, p in enumerate(train)]
    return list(dict.fromkeys(out))


def profile_pair(donor: ModelAccess | object, recipient: ModelAccess | object, prompts: Sequence[str],
                 progress: bool = False) -> ProfilePair:
    """Profile both models on ``prompts`` (all layers), with the wall time and the forward FLOPs
    (:func:`~commandv_interp.access.forward_flops`: a profile's passes stop after the last block)."""
    donor, recipient = open_model(donor), open_model(recipient)
    start = time.perf_counter()
    p_donor = profile(donor, prompts, progress=progress)
    p_recipient = profile(recipient, prompts, progress=progress)
    flops = (forward_flops(donor, prompts, donor.n_layers - 1)
             + forward_flops(recipient, prompts, recipient.n_layers - 1))
    return ProfilePair(p_donor, p_recipient, time.perf_counter() - start, flops, len(prompts), tuple(prompts))


def derive(donor: ModelAccess | object, recipient: ModelAccess | object, prompts: Sequence[str] | ProfilePair,
           donor_layers: Sequence[int], match: str = "depth", method: str = "ridge", metric: str = "cka",
           adapter: Adapter | None = None, chain_alpha: float | None = None, progress: bool = False) -> Derivation:
    """Profile both models (or reuse a :class:`ProfilePair`), match the donor's layers and fit converters, timing
    all of it.

    FLOPs count the forward passes the derivation needs, each stopped after the deepest layer it reads
    (:func:`~commandv_interp.access.forward_flops`): with ``match="depth"`` the profiles need only the mapped layers,
    with ``similarity`` all of them; plus ``4 · N · d_in · d_out`` per fitted map. A reused profile pair's wall
    time is counted in full.

    Args:
        donor, recipient: the two models.
        prompts: profile prompts (the same for both), or their profiles from :func:`profile_pair`.
        donor_layers: the adapter's donor layers to map.
        match: ``depth`` or ``similarity``; method: a converter method or ``interface`` (needs ``adapter``);
        metric: similarity metric.
        adapter: the donor adapter, for ``method="interface"`` (converters fitted to its read/write directions).
        chain_alpha: with ``method="interface"``, fit the converters layer after layer under the paste at this
            ``α`` (:func:`~commandv_interp.chaining.fit_chained_interface_converters`). With ``match="depth"`` the
            chained fit needs no profiles: it runs its own passes (one donor pass with the adapter, one recipient
            pass per mapped recipient layer) on the prompts, and only those are counted; a :class:`ProfilePair`
            then only lends its profiles to the result, and with a prompt list the result has none.
    """
    if method == INTERFACE_METHOD and adapter is None:
        raise ValueError("method='interface' fits converters to one adapter: pass adapter=")
    if chain_alpha is not None and method != INTERFACE_METHOD:
        raise ValueError(f"chain_alpha chains interface converters; method is {method!r}: pass method='interface'")
    donor, recipient = open_model(donor), open_model(recipient)
    if chain_alpha is not None and match == "depth":
        return _derive_chained_by_depth(donor, recipient, prompts, adapter, chain_alpha)  # type: ignore[arg-type]
    pair = prompts if isinstance(prompts, ProfilePair) else profile_pair(donor, recipient, prompts, progress)
    start = time.perf_counter()
    p_donor, p_recipient = pair.donor_profile, pair.recipient_profile
    layer_map = match_layers(p_donor, p_recipient, method=match, donor_layers=donor_layers, metric=metric)  # type: ignore[arg-type]
    mapped = [r for _, r in layer_map.pairs]
    through = ((donor.n_layers - 1, recipient.n_layers - 1) if match == "similarity"
               else (max(layer_map.as_dict()), max(mapped)))
    flops = forward_flops(donor, pair.prompts, through[0]) + forward_flops(recipient, pair.prompts, through[1])
    if method == INTERFACE_METHOD:
        width = 2 * adapter.rank * (donor.d_model + recipient.d_model)  # type: ignore[union-attr]
        if chain_alpha is None:
            converters = fit_interface_converters(adapter, p_donor, p_recipient, layer_map)  # type: ignore[arg-type]
        else:  # the recipient's lowest mapped layer comes from its profile
            converters = fit_chained_interface_converters(donor, recipient, adapter, pair.prompts, p_donor,  # type: ignore[arg-type]
                                                          p_recipient, layer_map, alpha=chain_alpha)
            flops += _chain_flops(donor, recipient, pair.prompts, adapter, layer_map, skip_first=True)  # type: ignore[arg-type]
    else:
        converters = fit_converters(p_donor, p_recipient, layer_map, method=method)  # type: ignore[arg-type]
        width = 2 * donor.d_model * recipient.d_model
    wall = pair.wall_s + time.perf_counter() - start
    flops += 4.0 * pair.n_prompts * width * len(layer_map.pairs)
    return Derivation(p_donor, p_recipient, layer_map, converters, wall, flops, pair.n_prompts)


def _chain_flops(donor: ModelAccess, recipient: ModelAccess, prompts: Sequence[str], adapter: Adapter,
                 layer_map: LayerMap, skip_first: bool) -> float:
    """The chained fit's own passes: the donor with its adapter up to its highest layer, the recipient up to each
    mapped recipient layer (the lowest one spared when it comes from a profile)."""
    targets = sorted(set(layer_map.restrict(adapter.layers).as_dict().values()))[int(skip_first):]
    return (forward_flops(donor, prompts, max(adapter.layers))
            + sum(forward_flops(recipient, prompts, r) for r in targets))


def _derive_chained_by_depth(donor: ModelAccess, recipient: ModelAccess, prompts: Sequence[str] | ProfilePair,
                             adapter: Adapter, chain_alpha: float) -> Derivation:
    pair = prompts if isinstance(prompts, ProfilePair) else None
    texts = list(pair.prompts if pair is not None else prompts)  # type: ignore[union-attr]
    start = time.perf_counter()
    layer_map = relative_depth_map(adapter.layers, donor.n_layers, recipient.n_layers, donor.name, recipient.name)
    converters = fit_chained_interface_converters(donor, recipient, adapter, texts, layer_map=layer_map,
                                                  alpha=chain_alpha)
    wall = time.perf_counter() - start
    width = 2 * 2 * adapter.rank * (donor.d_model + recipient.d_model)  # each layer's fit
    flops = (_chain_flops(donor, recipient, texts, adapter, layer_map, skip_first=False)
             + 4.0 * len(texts) * width * len(layer_map.pairs))
    return Derivation(pair.donor_profile if pair else None, pair.recipient_profile if pair else None, layer_map,
                      converters, wall, flops, len(texts))


def _manifest_rates(model: str, behavior: str, condition: str) -> dict[str, float]:
    return {r["metric"]: r["value"] for r in manifest()["behavior_table"]
            if (r["model"], r["behavior"], r["condition"]) == (model, behavior, condition)}


def transfer_rows(donor: ModelAccess, recipient: ModelAccess, derivation: Derivation | Mapping[str, Derivation],
                  behaviors: Sequence[Behavior] = ("refusal", "jailbreak", "cot"), positions: str = "last",
                  alpha: float = 1.0, limit: int | None = None, recompute: bool = False) -> pd.DataFrame:
    """Score the four conditions for each behavior (test split, no cue).

    Args:
        donor, recipient: zoo models (their ``name`` is the zoo name).
        derivation: from :func:`derive` for these two models, one for all behaviors or one per behavior
            (``interface`` converters and the ``task`` profile set are per behavior).
        limit: score only the first ``limit`` test prompts (then every condition is recomputed).
        recompute: recompute ``donor_adapter`` and ``recipient_finetune`` instead of reading the manifest.

    Returns:
        Tidy rows ``donor, recipient, behavior, condition, metric, value``, plus the cost rows
        (``condition`` ``command_v``/``recipient_finetune``, metrics ``wall_s`` and ``flops``).
    """
    rows = []

    def add(behavior: str, condition: str, rates: dict[str, float]) -> None:
        rows.extend({"donor": donor.name, "recipient": recipient.name, "behavior": behavior, "condition": condition,
                     "metric": k, "value": float(v)} for k, v in rates.items())

    per_behavior = derivation if isinstance(derivation, Mapping) else {b: derivation for b in behaviors}
    missing = [b for b in behaviors if b not in per_behavior]
    if missing:
        raise ValueError(f"no derivation for behaviors {missing}; pass one per behavior or a single Derivation")
    for behavior in behaviors:
        adapter, d = load_adapter(donor.name, behavior), per_behavior[behavior]
        add(behavior, "recipient_base", evaluate(recipient, behavior, limit=limit))
        with paste(recipient, adapter, d.converters, positions=positions, alpha=alpha):
            add(behavior, "command_v", evaluate(recipient, behavior, limit=limit))
        if recompute or limit is not None:
            with apply_adapter(donor, adapter):
                add(behavior, "donor_adapter", evaluate(donor, behavior, limit=limit))
            with apply_adapter(recipient, load_adapter(recipient.name, behavior)):
                add(behavior, "recipient_finetune", evaluate(recipient, behavior, limit=limit))
        else:
            add(behavior, "donor_adapter", _manifest_rates(donor.name, behavior, "adapter"))
            add(behavior, "recipient_finetune", _manifest_rates(recipient.name, behavior, "adapter"))
        cost = manifest()["models"][recipient.name]["adapters"][behavior]["training"]
        add(behavior, "command_v", {"wall_s": d.wall_s, "flops": d.flops})
        add(behavior, "recipient_finetune", {"wall_s": cost["wall_time_s"], "flops": cost["flops"]})
    return pd.DataFrame(rows)
