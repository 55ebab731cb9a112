"""Consumes a recipient :class:`ModelAccess`, a donor :class:`Adapter` and :class:`Converters`,
produces the recipient edited inside a ``with`` block (:func:`paste`), or a model running an adapter natively
(:func:`apply_adapter`).

At every mapped recipient layer ``l_R`` and selected position::

    h_R ← h_R + α · Σ_{l_D ↦ l_R} to_recipient.linear( adapter[l_D].delta( to_donor(h_R) ) )

Several donor layers mapped to one recipient layer add up. Positions are explicit (see
:data:`~commandv_interp.types.PositionRule`); per-row positions come from the attention mask. Entering a paste
places the pieces on the recipient's devices and nothing more: the compiled low-rank form (what a remote trace
runs) is built only if a remote run asks for it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Iterator

from commandv_interp.access import ModelAccess, open_model
from commandv_interp.access.intrace import LowRankEdit
from commandv_interp.adapters import Adapter
from commandv_interp.adapters.edits import adapter_edits, check_positions, delta_edit
from commandv_interp.adapters.linear_form import has_linear_form
from commandv_interp.converters import Converters
from commandv_interp.converters.transport import pasted_deltas
from commandv_interp.paste.compile import compile_paste
from commandv_interp.types import PositionRule
from commandv_interp.validation import check_alpha

__all__ = ["paste", "apply_adapter"]


@contextlib.contextmanager
def apply_adapter(
    model: ModelAccess, adapter: Adapter, positions: PositionRule | None = None, alpha: float = 1.0,
) -> Iterator[ModelAccess]:
    """Apply an adapter natively (on the model it was trained for, or a compiled paste).

    Args:
        model: the model (its ``d_model`` must equal the adapter's).
        adapter: one intervention per layer.
        positions: position rule (default: the adapter's own rule).
        alpha: scale of every delta.
    """
    access = open_model(model)
    _check_alpha(alpha)
    with access.edited(adapter_edits(access, adapter, positions, alpha)):
        yield access


def _check_alpha(alpha: float) -> None:
    check_alpha(alpha)  # finite, |alpha| <= validation.MAX_ALPHA: one message for the API, CLI and studies


@contextlib.contextmanager
def paste(
    recipient: ModelAccess,
    adapter: Adapter,
    converters: Converters,
    positions: PositionRule = "last",
    alpha: float = 1.0,
    first_last_k: int | None = None,
) -> Iterator[ModelAccess]:
    """Paste a donor adapter into a recipient through converters (Command-V).

    Inside the ``with`` block every ``forward``/``generate``/``read`` of the recipient carries the pasted
    edit; on exit (also on exceptions) all hooks are gone and the recipient is unchanged.

    Args:
        recipient: the recipient model (``ModelAccess`` or anything ``open_model`` accepts).
        adapter: the donor's adapter (its layers must all be mapped by ``converters``).
        converters: fitted between the adapter's donor and this recipient.
        positions: ``last`` (paper: last prompt token, prompt pass only), ``last+decode``, ``all``,
            ``all+decode`` or ``first_last``.
        alpha: scale factor of the pasted delta (converters from a chained fit warn unless it is their
            ``chain_alpha``).
        first_last_k: ``k`` for ``first_last``.

    Example:
        >>> with paste(recipient, adapter, converters, positions="last"):  # doctest: +SKIP
        ...     texts = recipient.generate(recipient.encode(prompts))
    """
    access = open_model(recipient)
    check_positions(positions, first_last_k)
    adapter.check_positions(positions)
    _check_alpha(alpha)
    if converters.chain_alpha is not None and not math.isclose(alpha, converters.chain_alpha, rel_tol=1e-6):
        warnings.warn(f"these converters were chained at alpha={converters.chain_alpha:g} but are pasted at "
                      f"alpha={alpha:g}: later layers read states their converters were not fitted on; refit with "
                      f"fit_chained_converters(..., alpha={alpha:g})", stacklevel=3)
    compiled = functools.cache(lambda: compile_paste(adapter, converters, positions, alpha, first_last_k))
    linear = all(has_linear_form(iv) for iv in adapter.interventions.values())
    edits = {layer: delta_edit(fns, positions, first_last_k, alpha,
                               functools.partial(_compiled_form, compiled, layer, positions, first_last_k) if linear
                               else None)
             for layer, fns in pasted_deltas(access, adapter, converters).items()}
    with access.edited(edits):
        yield access


def _compiled_form(compiled, layer: int, positions: PositionRule, k: int | None) -> tuple[LowRankEdit, ...]:
    """Recipient layer ``layer``'s part of the compiled paste as low-rank tensors."""
    iv = compiled().interventions[layer]
    return (LowRankEdit(iv.learned_source.weight, iv.learned_source.bias, iv.proj_layer.weight, iv.act_name,
                        positions, k),)
