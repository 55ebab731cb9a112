"""Stage 6 (pipeline): consumes a donor with its adapter and unlabeled prompts, produces the label-free selection
signal of a paste: how strongly the pasted recipient prefers what the donor *with* its adapter answers over what it
would answer otherwise.

For each scoring prompt the donor answers twice, greedily: with its adapter (the *target* response) and without it.
Where the two differ, the adapter changed the answer and the other one is the *foil*: a faithful paste makes the
recipient prefer the target over the foil. Where they agree, the adapter left the prompt alone (a benign request
under a refusal adapter) and a faithful paste must leave it alone too: the foil is then an answer the adapter gave
to *another* prompt, i.e. the behavior where it does not belong (what an over-eager paste produces).

The recipient scores both responses teacher-forced, re-tokenized with its own tokenizer after the prompt, with the
edit acting where the paste acts when it generates: the last prompt token (the responses' own positions then read
the edited state through attention, exactly as decoding with a KV cache does). The per-prompt margin is the
log-likelihood ratio of the two responses, ``log P(target) − log P(foil)`` (summed over their tokens: the behavior
shows in the first tokens where they diverge, and the tokens after that are predictable in both, so a per-token mean
would dilute it by the response length); the criterion is the balanced mean of ``sigmoid(margin)`` over changed and
unchanged prompts (each group weighs one half when both occur): the probability, averaged, that the recipient would
rank the donor+adapter's answer above the alternative, in [0, 1], where 0.5 is indifference. Forward passes only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from commandv_interp.access import Batch, EditContext, ModelAccess, batches
from commandv_interp.adapters import Adapter
from commandv_interp.adapters.edits import DeltaFn, adapter_edits
from commandv_interp.types import Float, Tensor

__all__ = ["DonorTargets", "donor_targets", "response_margins", "criterion", "group_preferences", "at_prompt_end"]


@dataclass(frozen=True)
class DonorTargets:
    """What the donor's adapter does on the scoring prompts: per prompt a target and a foil response (texts)."""

    prompts: tuple[str, ...]
    target: tuple[str, ...]
    foil: tuple[str, ...]
    changed: tuple[bool, ...]

    @property
    def n_changed(self) -> int:
        return sum(self.changed)


def donor_targets(donor: ModelAccess, adapter: Adapter, prompts: Sequence[str], max_new_tokens: int,
                  batch_size: int = 32) -> DonorTargets:
    """Greedy responses of the donor with and without ``adapter`` and the target/foil pairs they give.

    Raises:
        ValueError: the adapter changes none of the prompts' responses (no signal to select with: give prompts of
            the adapter's task, or more tokens).
    """
    prompts = list(prompts)
    plain = _respond(donor, prompts, max_new_tokens, batch_size)
    with donor.edited(adapter_edits(donor, adapter)):
        adapted = _respond(donor, prompts, max_new_tokens, batch_size)
    changed = [a != b for a, b in zip(adapted, plain)]
    moved = [a for a, c in zip(adapted, changed) if c]
    if not moved:
        raise ValueError(f"the donor's adapter changes none of the {len(prompts)} scoring prompts' first "
                         f"{max_new_tokens} response tokens; pass prompts of the adapter's task (e.g. its training "
                         "inputs) or a larger max_new_tokens")
    foils, k = [], 0
    for a, b, c in zip(adapted, plain, changed):
        if c:
            foils.append(b)
        else:  # the behavior where it does not belong: another prompt's adapted answer, different from this one
            pick = next((m for m in moved[k:] + moved[:k] if m != a), None)
            k = (k + 1) % len(moved)
            foils.append(pick if pick is not None else "")
    keep = [i for i, f in enumerate(foils) if f]
    return DonorTargets(tuple(prompts[i] for i in keep), tuple(adapted[i] for i in keep),
                        tuple(foils[i] for i in keep), tuple(changed[i] for i in keep))


def _respond(access: ModelAccess, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    out: list[str] = []
    for batch in batches(access, prompts, batch_size):
        out += access.generate(batch, max_new_tokens=max_new_tokens)
    return out


def _sequences(access: ModelAccess, prompts: Sequence[str], responses: Sequence[str]
               ) -> tuple[Batch, list[int], list[int]]:
    """Right-padded ``prompt + " " + response`` ids, each row's prompt length and total length (recipient's tokens)."""
    tok = access.tokenizer
    rows, prompt_lens = [], []
    for prompt, response in zip(prompts, responses):
        p_ids = tok(prompt)["input_ids"]
        f_ids = tok(prompt + " " + response)["input_ids"]
        if f_ids[:len(p_ids)] != p_ids:  # the response merged with the prompt's last token: fall back to concatenation
            f_ids = p_ids + tok(" " + response, add_special_tokens=False)["input_ids"]
        rows.append(f_ids)
        prompt_lens.append(len(p_ids))
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return Batch(ids, mask), prompt_lens, [len(r) for r in rows]


def at_prompt_end(per_layer: dict[int, list[DeltaFn]], prompt_lens: Sequence[int], alpha: float) -> dict:
    """Edits adding ``α Σ f(h)`` at each row's last prompt token of a teacher-forced batch (prompt + response)."""
    rows = torch.arange(len(prompt_lens))
    cols = torch.tensor([n - 1 for n in prompt_lens])

    def make(fns: list[DeltaFn]) -> Callable[[Tensor, EditContext], Tensor]:
        def edit(hidden: Tensor, ctx: EditContext) -> Tensor:
            r, c = rows.to(hidden.device), cols.to(hidden.device)
            h = hidden[r, c]
            out = hidden.clone()
            out[r, c] = h + (alpha * sum(fn(h.float()) for fn in fns)).to(hidden.dtype)
            return out

        edit.acts_on_decode = False
        return edit

    return {layer: make(fns) for layer, fns in per_layer.items()}


def response_margins(recipient: ModelAccess, targets: DonorTargets,
                     per_layer: dict[int, list[DeltaFn]] | None = None, alpha: float = 1.0,
                     batch_size: int = 32) -> Float[Tensor, " n"]:
    """Per scoring prompt: the log-likelihood of the target minus that of the foil (summed over tokens), under the pasted
    deltas ``per_layer`` (recipient layer → delta functions, e.g. :func:`~commandv_interp.converters.pasted_deltas`)
    at scale ``alpha``, acting at the last prompt token; ``None`` scores the plain recipient."""
    scores = []
    for texts in (targets.target, targets.foil):
        parts = []
        for start in range(0, len(targets.prompts), batch_size):
            stop = start + batch_size
            parts.append(_loglik(recipient, targets.prompts[start:stop], texts[start:stop], per_layer, alpha))
        scores.append(torch.cat(parts))
    return scores[0] - scores[1]


def _loglik(recipient: ModelAccess, prompts: Sequence[str], responses: Sequence[str],
                 per_layer: dict[int, list[DeltaFn]] | None, alpha: float) -> Float[Tensor, " n"]:
    batch, prompt_lens, lengths = _sequences(recipient, prompts, responses)
    edits = at_prompt_end(per_layer, prompt_lens, alpha) if per_layer else {}
    with torch.no_grad(), recipient.edited(edits):
        logits = recipient.forward(batch).float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch.input_ids[:, 1:, None].to(logits.device))[..., 0]
    out = []
    for i, (p, n) in enumerate(zip(prompt_lens, lengths)):
        tokens = logp[i, p - 1:n - 1]  # predictions of the response tokens
        out.append(tokens.sum())
    return torch.stack(out).cpu().double()


def group_preferences(margins: Float[Tensor, " n"], changed: Sequence[bool]) -> dict[str, float]:
    """Mean ``sigmoid(margin)`` over the changed and over the unchanged prompts (NaN for an empty group)."""
    soft = torch.sigmoid(margins.double())
    mask = torch.tensor(list(changed), dtype=torch.bool)
    return {"pref_changed": float(soft[mask].mean()) if mask.any() else math.nan,
            "pref_unchanged": float(soft[~mask].mean()) if (~mask).any() else math.nan}


def criterion(margins: Float[Tensor, " n"], changed: Sequence[bool]) -> float:
    """Balanced mean of ``sigmoid(margin)`` over changed and unchanged prompts (see the module doc)."""
    soft = torch.sigmoid(margins.double())
    mask = torch.tensor(list(changed), dtype=torch.bool)
    groups = [soft[mask], soft[~mask]]
    means = [float(g.mean()) for g in groups if g.numel()]
    return sum(means) / len(means)
