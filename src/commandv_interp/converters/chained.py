"""Consumes a donor and a recipient model, the donor's :class:`Adapter` and prompts
(optionally profiles over them and a :class:`LayerMap`), produces adapter-aware (``interface``) :class:`Converters` fitted layer after
layer on the states each pasted intervention actually reads: a *chained* fit.

Why. An adapter on several layers is a circuit: at donor layer ``l_j`` its intervention reads a state that the
interventions at the layers below have already moved. On the zoo the layers only work together: gpt2's refusal
adapter refuses 0.00 of harmful test requests with its layer 0 alone, 0.08 with its layer 2 alone and 1.00 with
both. :func:`~commandv_interp.converters.interface.fit_interface_converters` fits every layer on *unedited* profiles, so
a later layer's read converter meets, at paste time, states it was never fitted on: those the earlier pasted
layers moved. The chained fit refits the converters of each mapped recipient layer ``r`` (in ascending order) on

- the donor's states at its layers mapped to ``r``, recorded with the donor's own adapter active (each state
  before the edit at its own layer, after the edits below it), and
- the recipient's states at ``r`` with the paste of the donor layers mapped below ``r`` active, through the
  converters chained so far, at the ``alpha`` the converters will be pasted with.

The first mapped recipient layer gets the plain interface fit. The converters record ``chain_alpha``;
:func:`~commandv_interp.paste.paste` warns when they are pasted at another ``alpha``.

Cost: no profiles are needed. One donor forward pass over the prompts with its adapter, stopped after its highest
layer, and one recipient pass per mapped recipient layer, stopped after that layer (the first is spared when a
recipient profile over the prompts is passed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from commandv_interp.access import ModelAccess, open_model, recorded_states
from commandv_interp.access.limits import check_fits_context
from commandv_interp.adapters import Adapter
from commandv_interp.adapters.edits import adapter_edits
from commandv_interp.converters.artifact import Converters
from commandv_interp.converters.interface import fit_interface_converters
from commandv_interp.converters.transport import pasted_edits
from commandv_interp.correspondence import LayerMap, relative_depth_map
from commandv_interp.profiles import ActivationProfile
from commandv_interp.types import PositionRule

__all__ = ["fit_chained_converters"]


def _for_adapter(converters: Converters, pairs: dict, adapter: Adapter) -> Converters:
    """``converters`` narrowed to ``adapter``'s layers, with the chained ``pairs`` and that adapter's digest."""
    return dataclasses.replace(converters, pairs=tuple(pairs[layer] for layer in adapter.layers),
                               adapter_digest=adapter.digest())


def fit_chained_converters(
    donor_model: ModelAccess,
    recipient_model: ModelAccess,
    adapter: Adapter,
    prompts: Sequence[str],
    layer_map: LayerMap | None = None,
    alpha: float = 1.0,
    donor_profile: ActivationProfile | None = None,
    recipient_profile: ActivationProfile | None = None,
    positions: PositionRule = "last",
    batch_size: int = 32,
    holdout: float = 0.2,
    ridge_grid: tuple[float, ...] | None = None,
) -> Converters:
    """Interface converters for ``adapter``, each mapped recipient layer fitted under the paste of those below it.

    Needs no profiles: the donor's states come from one pass with its adapter (at its lowest layer they are the
    plain states), the recipient's from one pass per mapped recipient layer, each stopped after that layer.
    Profiles already taken on ``prompts`` spare the recipient's first pass.

    Args:
        donor_model, recipient_model: the two models (``ModelAccess`` or anything ``open_model`` accepts).
        adapter: the donor's adapter (linear-source kinds, as for ``method="interface"``).
        prompts: the fitting prompts (the exact texts fed to the models; with profiles, the texts they were taken
            on: their fingerprints must match).
        layer_map: which recipient layer each of the adapter's donor layers maps to (default: relative depth,
            :func:`~commandv_interp.correspondence.relative_depth_map`).
        alpha: the scale the converters will be pasted with (the chain is fitted under it).
        donor_profile, recipient_profile: optional unedited profiles over ``prompts`` (only their provenance and,
            for the recipient, the lowest mapped layer are used).
        positions: where the donor's adapter and the paste act while the chain is recorded.
        batch_size: prompts per forward pass.
        holdout, ridge_grid: as in :func:`~commandv_interp.converters.fit_converters`.

    Returns:
        :class:`Converters` with ``method="interface"``, ``extra["chained"] = True`` and ``chain_alpha = alpha``.

    Raises:
        ValueError: profiles not taken on ``prompts``, a non-finite ``alpha``, and everything
            ``fit_interface_converters`` refuses.
    """
    prompts = list(prompts)
    for given in (donor_profile, recipient_profile):
        if given is not None:
            given.check_taken_on(prompts)
    donor, recipient = open_model(donor_model), open_model(recipient_model)
    check_fits_context(donor, prompts)
    check_fits_context(recipient, prompts)
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha!r}")
    if layer_map is None:
        layer_map = relative_depth_map(adapter.layers, donor.n_layers, recipient.n_layers, donor.name, recipient.name)
    mapped = layer_map.restrict(adapter.layers).as_dict()
    unmapped = [layer for layer in adapter.layers if layer not in mapped]
    if unmapped:
        raise ValueError(f"the layer map has no recipient layer for donor layers {unmapped}; match the adapter's "
                         f"layers {list(adapter.layers)}")
    donor_states = ActivationProfile.from_states(donor, prompts, recorded_states(
        donor, adapter.layers, prompts, donor.edited(adapter_edits(donor, adapter, positions)), batch_size))
    if donor_profile is not None:
        donor_states = dataclasses.replace(donor_profile, activations=donor_states.activations)
    pairs: dict = {}
    template: Converters | None = None
    for r_layer in sorted(set(mapped.values())):
        group = adapter.restricted([layer for layer in adapter.layers if mapped[layer] == r_layer])
        below = [layer for layer in adapter.layers if mapped[layer] < r_layer]
        if below:
            earlier = adapter.restricted(below)
            edit = recipient.edited(pasted_edits(recipient, earlier, _for_adapter(template, pairs, earlier), positions,
                                                 alpha))
            h_r = recorded_states(recipient, [r_layer], prompts, edit, batch_size)[r_layer]
        elif recipient_profile is not None:
            h_r = recipient_profile[r_layer]
        else:
            h_r = recorded_states(recipient, [r_layer], prompts, None, batch_size)[r_layer]
        p_recipient = (ActivationProfile.from_states(recipient, prompts, {r_layer: h_r}) if recipient_profile is None
                       else dataclasses.replace(recipient_profile, activations={r_layer: h_r}))
        p_donor = dataclasses.replace(donor_states, activations={layer: donor_states[layer] for layer in group.layers})
        fitted = fit_interface_converters(p_donor, p_recipient, layer_map, group, holdout, ridge_grid)
        template = template or fitted
        pairs.update({pair.donor_layer: pair for pair in fitted.pairs})
    chained = _for_adapter(template, pairs, adapter)  # type: ignore[arg-type]
    return dataclasses.replace(chained, extra={**chained.extra, "chained": True}, chain_alpha=float(alpha))
