"""Consumes a donor model, a donor edit of any kind (:data:`~commandv_interp.adapters.edit.Edit`) and unlabeled prompts,
produces a last-token NodiReFT *surrogate* of the edit (what Command-V can paste) with its per-layer fidelity.

At each of the edit's layers ``l`` the edit's *local* delta at the last prompt token is read off two passes: the
block output with the edit acting at the layers before ``l`` only (``x_l``: the state the edit at ``l`` meets) and
with it acting at ``l`` too (``y_l``); ``d_l = y_l − x_l``. A LoRA's local delta is what its modules in block ``l``
add; a block-output edit's (a ReFT adapter, a steering vector) is its own delta. The surrogate is the rank-``r``
affine map that fits ``d_l ≈ (x_l Wᵀ + b) P`` by least squares (no backprop): the affine fit on centered ``x``
(minimum norm), then its fitted values projected onto their top ``r`` right singular vectors ``V_r``
(``P = V_rᵀ``). When the edit is itself a linear NodiReFT of rank ≤ ``r`` at the last token and there are more
fitting prompts than ``d_model``, this recovers it exactly; a steering vector (a constant delta) is recovered at
rank 1 as ``W = 0``, ``b P = scale · v``.

Fidelity per layer, on held-out prompts: ``r2`` (``1 − SSE / SST`` of the delta about the fitting mean; NaN for a
constant delta), ``explained`` (``1 − SSE / Σ‖d‖²``), and ``agreement``: the share of held-out prompts whose greedy
answer with the edit, the surrogate standing in for it at that layer, equals the answer with the edit. Where the
edit acts at every token (a LoRA, a steering vector) a last-token surrogate carries only part of it; the numbers
say how much.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
from dataclasses import dataclass, field, replace

import pandas as pd
import torch

from commandv_interp.access import ModelAccess, batches, forward_flops, open_model
from commandv_interp.adapters.edit import Edit, apply_edit, restrict_edit
from commandv_interp.adapters.adapter import Adapter
from commandv_interp.adapters.interventions import NodiReFT
from commandv_interp.types import Float, Tensor

__all__ = ["SurrogateAdapter", "Surrogate", "fit_surrogate", "pasteable", "fit_low_rank", "edit_deltas", "teacher_of"]


@dataclass(frozen=True)
class SurrogateAdapter(Adapter):
    """A last-token NodiReFT :class:`Adapter` standing for a donor edit; ``teacher`` is that edit (what answers as the
    donor+edit wherever the donor's own answers are needed: the transfer's targets and its distillation)."""

    teacher: object = field(default=None, compare=False, repr=False)

    def restricted(self, layers: Sequence[int]) -> SurrogateAdapter:
        """The surrogate at ``layers`` only, taught by the whole edit still (a paste of some layers learns it all)."""
        sub = super().restricted(layers)
        return SurrogateAdapter(sub.interventions, sub.positions, sub.first_last_k, sub.metadata, teacher=self.teacher)


def teacher_of(adapter: Edit) -> Edit:
    """The edit whose answers a transfer learns: a surrogate's teacher, else the edit itself."""
    teacher = getattr(adapter, "teacher", None)
    return teacher if teacher is not None else adapter


@dataclass(frozen=True)
class Surrogate:
    """A fitted surrogate: ``adapter`` (the NodiReFT, with the edit as its teacher), ``fidelity`` (one row per layer:
    ``layer, rank, r2, explained, n_fit, n_heldout, agreement, edit_changes``; ``edit_changes`` is the share of
    held-out answers the edit itself changes, what an agreement of 1 is worth) and ``agreement`` (held-out answers of
    the donor with the whole surrogate that equal those with the edit)."""

    adapter: SurrogateAdapter
    fidelity: pd.DataFrame
    agreement: float


def edit_deltas(donor_model: ModelAccess, edit: Edit, prompts: Sequence[str], layers: Sequence[int] | None = None,
                batch_size: int = 32) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    """``(x, d)``: layer → ``n_prompts × d_model`` last-token states the edit meets at that layer, and its local
    deltas there (see the module doc; float64, CPU)."""
    donor = open_model(donor_model)
    layers = sorted(edit.layers if layers is None else layers)
    xs: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    ys: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    for batch in batches(donor, list(prompts), batch_size):
        with apply_edit(donor, edit):
            full = donor.read(batch, layers)
        for layer in layers:
            with apply_edit(donor, restrict_edit(edit, list(range(layer)))):
                xs[layer].append(donor.read(batch, [layer])[layer].double())
            ys[layer].append(full[layer].double())
    x = {layer: torch.cat(xs[layer]) for layer in layers}
    return x, {layer: torch.cat(ys[layer]) - x[layer] for layer in layers}


def fit_low_rank(x: Float[Tensor, "n d_model"], d: Float[Tensor, "n d_model"], rank: int
                 ) -> tuple[Float[Tensor, "rank d_model"], Float[Tensor, " rank"], Float[Tensor, "rank d_model"]]:
    """``(W, b, P)`` with ``d ≈ (x Wᵀ + b) P`` of rank ≤ ``rank`` by least squares (see the module doc).

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    >>> w, b, p = torch.randn(2, 6, generator=g, dtype=torch.float64), torch.ones(2, dtype=torch.float64), \
torch.randn(2, 6, generator=g, dtype=torch.float64)
    >>> W, B, P = fit_low_rank(x, (x @ w.T + b) @ p, 2)
    >>> bool(torch.allclose((x @ W.T + B) @ P, (x @ w.T + b) @ p))
    True
    """
    x, d = x.double(), d.double()
    x_mean, d_mean = x.mean(0), d.mean(0)
    m = torch.linalg.lstsq(x - x_mean, d - d_mean, driver="gelsd").solution  # d_model × d_model
    intercept = d_mean - x_mean @ m
    fitted = x @ m + intercept
    rank = max(1, min(int(rank), *fitted.shape))
    v = torch.linalg.svd(fitted, full_matrices=False).Vh[:rank].T  # d_model × rank
    return (m @ v).T.contiguous(), intercept @ v, v.T.contiguous()


def _scores(x: Tensor, d: Tensor, w: Tensor, b: Tensor, p: Tensor, fit_mean: Tensor) -> tuple[float, float]:
    err = float(((x @ w.T + b) @ p - d).pow(2).sum())
    sst = float((d - fit_mean).pow(2).sum())
    energy = float(d.pow(2).sum())
    return (1 - err / sst if sst > 1e-12 * max(energy, 1e-30) else float("nan"),
            1 - err / energy if energy > 0 else float("nan"))


def _nodireft(w: Tensor, b: Tensor, p: Tensor) -> NodiReFT:
    rank, d_model = w.shape
    iv = NodiReFT(d_model, rank)
    with torch.no_grad():
        iv.learned_source.weight.copy_(w.float())
        iv.learned_source.bias.copy_(b.float())
        iv.proj_layer.weight.copy_(p.float())
        iv.proj_layer.bias.zero_()
    return iv.requires_grad_(False)


def fit_surrogate(donor_model: ModelAccess, edit: Edit, prompts: Sequence[str], rank: int = 8,
                  layers: Sequence[int] | None = None, heldout: float = 0.25, seed: int = 0,
                  max_new_tokens: int = 8, batch_size: int = 32) -> Surrogate:
    """Fit the last-token NodiReFT surrogate of ``edit`` on ``prompts`` and score it on a held-out share.

    Args:
        donor_model: the edit's own model.
        edit: a ReFT adapter, LoRA or steering vector (see :func:`~commandv_interp.adapters.edit.load_edit`).
        prompts: unlabeled prompts of the edit's task (more than ``d_model`` fitting prompts make a linear fit
            determined; fewer give the minimum-norm fit).
        rank: the surrogate's rank at each layer.
        layers: the layers to fit at (default: the edit's).
        heldout: share of the prompts held out for the fidelity scores (the fit never sees them).
        seed: the split.
        max_new_tokens: answer length compared by ``agreement``.

    Returns:
        A :class:`Surrogate`.
    """
    donor = open_model(donor_model)
    prompts = list(dict.fromkeys(prompts))
    if not 0 < heldout < 1 or len(prompts) < 4:
        raise ValueError(f"need heldout in (0, 1) and at least 4 distinct prompts, got heldout={heldout!r} and "
                         f"{len(prompts)} prompts")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = max(1, round(heldout * len(prompts)))
    held, fit = [prompts[i] for i in order[:n_held]], [prompts[i] for i in order[n_held:]]
    x, d = edit_deltas(donor, edit, prompts, layers, batch_size)
    fit_rows, held_rows = torch.tensor(order[n_held:]), torch.tensor(order[:n_held])
    ivs, rows = {}, []
    for layer in sorted(x):
        w, b, p = fit_low_rank(x[layer][fit_rows], d[layer][fit_rows], rank)
        r2, explained = _scores(x[layer][held_rows], d[layer][held_rows], w, b, p, d[layer][fit_rows].mean(0))
        ivs[layer] = _nodireft(w, b, p)
        rows.append({"layer": layer, "rank": int(w.shape[0]), "r2": r2, "explained": explained,
                     "n_fit": len(fit), "n_heldout": len(held)})
    meta = {"model_name": donor.name, "config_hash": donor.config_hash, "kind": "nodireft", "rank": rank,
            "surrogate_of": getattr(edit, "kind", type(edit).__name__)}
    adapter = SurrogateAdapter(ivs, "last", None, meta, teacher=edit)
    reference = _answers(donor, edit, None, held, max_new_tokens, batch_size)
    for row in rows:
        others = restrict_edit(edit, [layer for layer in edit.layers if layer != row["layer"]])
        swapped = _answers(donor, others, adapter.restricted([row["layer"]]), held, max_new_tokens, batch_size)
        row["agreement"] = _same(swapped, reference)
    whole = _same(_answers(donor, None, adapter, held, max_new_tokens, batch_size), reference)
    changes = 1 - _same(_answers(donor, None, None, held, max_new_tokens, batch_size), reference)
    for row in rows:
        row["edit_changes"] = changes
    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]
    adapter = replace(adapter, metadata=meta | {"surrogate_fidelity": records, "surrogate_agreement": whole,
                                                "surrogate_flops": _cost(donor, prompts, held, sorted(x),
                                                                         max_new_tokens)})
    return Surrogate(adapter, pd.DataFrame(rows), whole)


def pasteable(donor_model: ModelAccess, edit: Edit, prompts: Sequence[str], rank: int = 8) -> Adapter:
    """What Command-V pastes for ``edit``: a ReFT adapter as it is; a LoRA or steering vector as its last-token
    surrogate fitted on ``prompts`` (:func:`fit_surrogate`; fidelity in its ``metadata``), whose teacher is the edit.
    """
    if isinstance(edit, Adapter):
        return edit
    if not hasattr(edit, "restricted") or not hasattr(edit, "layers"):
        raise ValueError(f"expected a ReFT Adapter, LoraEdit or SteeringVectorEdit, got {type(edit).__name__}; "
                         "read a folder or file with load_edit(path)")
    return fit_surrogate(donor_model, edit, prompts, rank).adapter


def _cost(donor: ModelAccess, prompts: list[str], held: list[str], layers: Sequence[int], max_new_tokens: int) -> float:
    """FLOPs of :func:`fit_surrogate`: the reading passes of :func:`edit_deltas` over the prompts, each as far as it
    runs (:meth:`~commandv_interp.access.ModelAccess.read` stops after the last layer it reads: the edited pass after
    the edit's last layer, the pass for layer ``l`` after ``l``), and ``len(layers) + 3`` greedy generations of the
    held-out prompts."""
    tokens = sum(len(ids) for ids in donor.tokenizer(held)["input_ids"])
    generation = forward_flops(donor, held) * (1 + max_new_tokens * len(held) / max(tokens, 1))
    reading = forward_flops(donor, prompts, max(layers)) + sum(forward_flops(donor, prompts, layer) for layer in layers)
    return reading + (len(layers) + 3) * generation


def _answers(donor: ModelAccess, edit: Edit | None, extra: Adapter | None, prompts: list[str], max_new_tokens: int,
             batch_size: int) -> list[list[int]]:
    out: list[list[int]] = []
    with apply_edit(donor, edit), apply_edit(donor, extra):
        for batch in batches(donor, prompts, batch_size):
            out += donor.generate_ids(batch, max_new_tokens).tolist()
    return out


def _same(a: list[list[int]], b: list[list[int]]) -> float:
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1)

