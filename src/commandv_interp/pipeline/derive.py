"""Consumes a donor and a recipient model and prompts, produces a :class:`Derivation`: profiles,
layer map and converters, with what deriving them cost.

Cost of Command-V = profiling both models + matching + fitting: wall time and a FLOPs estimate of
``2 · params · tokens`` per forward pass, counting the parameters of the blocks the pass runs (it stops after the
deepest layer it reads), plus ``4 · N · d_in · d_out`` per fitted map. Several derivations may share one
:class:`ProfilePair`; each still counts the profiling it needs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from commandv_interp.access import ModelAccess, forward_flops, open_model
from commandv_interp.adapters import Adapter
from commandv_interp.converters import Converters, fit_chained_converters, fit_converters
from commandv_interp.correspondence import LayerMap, match_layers, relative_depth_map
from commandv_interp.profiles import ActivationProfile, profile

__all__ = ["Derivation", "ProfilePair", "derive", "profile_pair"]


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


def profile_pair(donor_model: ModelAccess, recipient_model: ModelAccess, prompts: Sequence[str],
                 progress: bool = False) -> ProfilePair:
    """Profile both models on ``prompts`` (all layers), with the wall time and the forward FLOPs
    (:func:`~commandv_interp.access.forward_flops`: a profile's passes stop after the last block)."""
    donor, recipient = open_model(donor_model), open_model(recipient_model)
    start = time.perf_counter()
    p_donor = profile(donor, prompts, progress=progress)
    p_recipient = profile(recipient, prompts, progress=progress)
    flops = (forward_flops(donor, prompts, donor.n_layers - 1)
             + forward_flops(recipient, prompts, recipient.n_layers - 1))
    return ProfilePair(p_donor, p_recipient, time.perf_counter() - start, flops, len(prompts), tuple(prompts))


def derive(donor_model: ModelAccess, recipient_model: ModelAccess, prompts: Sequence[str] | ProfilePair,
           donor_layers: Sequence[int], match: str = "depth", method: str = "ridge", metric: str = "cka",
           adapter: Adapter | None = None, chain_alpha: float | None = None, progress: bool = False) -> Derivation:
    """Profile both models (or reuse a :class:`ProfilePair`), match the donor's layers and fit converters, timing
    all of it.

    FLOPs count the forward passes the derivation needs, each stopped after the deepest layer it reads
    (:func:`~commandv_interp.access.forward_flops`): with ``match="depth"`` the profiles need only the mapped layers,
    with ``similarity`` all of them; plus ``4 · N · d_in · d_out`` per fitted map. A reused profile pair's wall
    time is counted in full.

    Args:
        donor_model, recipient_model: the two models.
        prompts: profile prompts (the same for both), or their profiles from :func:`profile_pair`.
        donor_layers: the adapter's donor layers to map.
        match: ``depth`` or ``similarity``; method: a converter method or ``interface`` (needs ``adapter``);
        metric: similarity metric.
        adapter: the donor adapter, for ``method="interface"`` (converters fitted to its read/write directions).
        chain_alpha: with ``method="interface"``, fit the converters layer after layer under the paste at this
            ``α`` (:func:`~commandv_interp.converters.fit_chained_converters`). With ``match="depth"`` the
            chained fit needs no profiles: it runs its own passes (one donor pass with the adapter, one recipient
            pass per mapped recipient layer) on the prompts, and only those are counted; a :class:`ProfilePair`
            then only lends its profiles to the result, and with a prompt list the result has none.
    """
    if method == "interface" and adapter is None:
        raise ValueError("method='interface' fits converters to one adapter: pass adapter=")
    if chain_alpha is not None and method != "interface":
        raise ValueError(f"chain_alpha chains interface converters; method is {method!r}: pass method='interface'")
    donor, recipient = open_model(donor_model), open_model(recipient_model)
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
    if method == "interface":
        width = 2 * adapter.rank * (donor.d_model + recipient.d_model)  # type: ignore[union-attr]
        if chain_alpha is None:
            converters = fit_converters(p_donor, p_recipient, layer_map, "interface", adapter)
        else:  # the recipient's lowest mapped layer comes from its profile
            converters = fit_chained_converters(donor, recipient, adapter, pair.prompts, layer_map,  # type: ignore[arg-type]
                                                chain_alpha, p_donor, p_recipient)
            flops += _chain_flops(donor, recipient, pair.prompts, adapter, layer_map, skip_first=True)  # type: ignore[arg-type]
    else:
        converters = fit_converters(p_donor, p_recipient, layer_map, method=method)  # type: ignore[arg-type]
        width = 2 * donor.d_model * recipient.d_model
    wall = pair.wall_s + time.perf_counter() - start
    flops += 4.0 * pair.n_prompts * width * len(layer_map.pairs)
    return Derivation(p_donor, p_recipient, layer_map, converters, wall, flops, pair.n_prompts)


def _chain_flops(donor_model: ModelAccess, recipient_model: ModelAccess, prompts: Sequence[str], adapter: Adapter,
                 layer_map: LayerMap, skip_first: bool) -> float:
    """The chained fit's own passes: the donor with its adapter up to its highest layer, the recipient up to each
    mapped recipient layer (the lowest one spared when it comes from a profile)."""
    targets = sorted(set(layer_map.restrict(adapter.layers).as_dict().values()))[int(skip_first):]
    return (forward_flops(donor_model, prompts, max(adapter.layers))
            + sum(forward_flops(recipient_model, prompts, r) for r in targets))


def _derive_chained_by_depth(donor_model: ModelAccess, recipient_model: ModelAccess,
                             prompts: Sequence[str] | ProfilePair, adapter: Adapter,
                             chain_alpha: float) -> Derivation:
    pair = prompts if isinstance(prompts, ProfilePair) else None
    texts = list(pair.prompts if pair is not None else prompts)  # type: ignore[union-attr]
    start = time.perf_counter()
    layer_map = relative_depth_map(adapter.layers, donor_model.n_layers, recipient_model.n_layers, donor_model.name,
                                   recipient_model.name)
    converters = fit_chained_converters(donor_model, recipient_model, adapter, texts, layer_map, chain_alpha)
    wall = time.perf_counter() - start
    width = 2 * 2 * adapter.rank * (donor_model.d_model + recipient_model.d_model)  # each layer's fit
    flops = (_chain_flops(donor_model, recipient_model, texts, adapter, layer_map, skip_first=False)
             + 4.0 * len(texts) * width * len(layer_map.pairs))
    return Derivation(pair.donor_profile if pair else None, pair.recipient_profile if pair else None, layer_map,
                      converters, wall, flops, len(texts))


