"""Consumes a donor with its adapter and unlabeled prompts, produces the label-free selection
signal of a paste: how strongly the pasted recipient prefers what the donor *with* its adapter answers over what it
would answer otherwise.

For each scoring prompt the donor answers twice, greedily: with its adapter (the *target* response) and without it.
Where the two differ, the adapter changed the answer and the other one is the *foil*: a faithful paste makes the
recipient prefer the target over the foil. Where they agree, the adapter left the prompt alone (a benign request
under a refusal adapter) and a faithful paste must leave it alone too: the foil is then an answer the adapter gave
to *another* prompt, i.e. the behavior where it does not belong (what an over-eager paste produces).

The recipient scores both responses teacher-forced, re-tokenized with its own tokenizer after the prompt, with the
edit acting where the paste acts when it generates: the last prompt token (the responses' own positions then read
the edited state through attention, exactly as decoding with a KV cache does). Two numbers come out per
prompt. The *agreement* is the share of the target's tokens that the recipient reproduces greedily before its first
divergence: teacher forcing gives every position's argmax in one pass, and the longest prefix of matches is exactly
how far a greedy generation under the paste follows the donor+adapter (a later match after a divergence counts for
nothing, as in generation). The *margin* is the log-likelihood ratio ``log P(target) − log P(foil)`` (summed over
tokens: the behavior shows in the first tokens where the two diverge and the rest is predictable in both, so a
per-token mean would dilute it). The criterion is the agreement averaged over changed and over unchanged prompts,
each group one half when both occur (so a paste that acts everywhere, or nowhere, scores at most one half). A
tie-breaker still moves when no generation changes yet: the same balance of ``sigmoid(margin)``, the *preference*,
or, scoring the targets only (half the passes; what :func:`~commandv_interp.pipeline.transfer` does), of
``sigmoid(log P(target) under the paste − log P(target) without it)``, the *lift*.
Forward passes only.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from commandv_interp.access import Batch, EditContext, ModelAccess, batches
from commandv_interp.access.limits import check_fits_context, context_length
from commandv_interp.adapters import Adapter
from commandv_interp.adapters.edit import Edit, apply_edit
from commandv_interp.adapters.edits import DeltaFn
from commandv_interp.adapters.surrogate import teacher_of
from commandv_interp.pipeline.forced_passes import ForcedPasses, response_sequences
from commandv_interp.types import Float, Int, Tensor

__all__ = ["DonorTargets", "ResponseScores", "AnswerPair", "at_prompt_end", "answer_limit", "answer_pair",
           "behavior_span", "donor_answers", "donor_targets", "greedy_responses", "onset_prompts",
           "response_sequences", "answer_labels", "score_responses", "summarize", "targets_from", "teaching", "ANSWER_CAP"]

ANSWER_CAP = 64  # new tokens at most in a donor answer: answers end at EOS or a newline first (whole answers)


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


def teaching(donor: ModelAccess, adapter: Adapter | Edit):
    """The donor answering as the teacher does inside the block: with ``adapter``, or, for a surrogate of another
    edit (a LoRA, a steering vector: :func:`~commandv_interp.adapters.surrogate.fit_surrogate`), with that edit."""
    return apply_edit(donor, teacher_of(adapter))


def donor_targets(donor: ModelAccess, adapter: Adapter, prompts: Sequence[str], max_new_tokens: int,
                  batch_size: int = 32) -> DonorTargets:
    """Greedy responses of the donor with and without ``adapter`` (whole words: see :func:`greedy_responses`) and
    the target/foil pairs they give (:func:`donor_answers` then :func:`targets_from`).

    Raises:
        ValueError: the adapter changes none of the prompts' responses (no signal to select with: give prompts of
            the adapter's task, or more tokens).
    """
    prompts = list(prompts)
    adapted, plain = donor_answers(donor, adapter, prompts, max_new_tokens, batch_size)
    return targets_from(prompts, adapted, plain, max_new_tokens)


def donor_answers(donor: ModelAccess, adapter: Adapter, prompts: Sequence[str], max_new_tokens: int,
                  batch_size: int = 32) -> tuple[list[str], list[str]]:
    """The donor's greedy answers (whole words) with and without ``adapter``: ``(adapted, plain)``."""
    pair = answer_pair(donor, adapter, prompts, max_new_tokens, batch_size)
    return pair.adapted, pair.plain


@dataclass(frozen=True)
class AnswerPair:
    """The donor's greedy answers (whole words) with (``adapted``) and without (``plain``) its adapter, and the first
    response token of each (``adapted_onsets``, ``plain_onsets``: what a one-token generation gives, read off the
    same generations). ``shared_tokens``: the prompt tokens the two generations ran once between them (each
    prompt's tokens before its last, when both started from its cached states; else 0)."""

    adapted: list[str]
    plain: list[str]
    adapted_onsets: list[str]
    plain_onsets: list[str]
    shared_tokens: int = 0


def answer_pair(donor: ModelAccess, adapter: Adapter, prompts: Sequence[str], max_new_tokens: int,
                batch_size: int = 32, share_prefix: bool = True) -> AnswerPair:
    """:func:`donor_answers` with the answers' first tokens (:class:`AnswerPair`).

    A teacher that acts at the last prompt token only (a ReFT adapter at ``positions="last"``) leaves the tokens
    before it as they are without it: where the backend keeps prefix states, both generations of a batch start from
    the same ones (:meth:`~commandv_interp.access.ModelAccess.generate_suffix`; the same tokens, to float rounding).
    Only in float32 or float64: in half precision the prompt states of a separate pass round differently from a whole
    generation's, and near-tied tokens flip (12 of 256 answers of the zoo's llama-6x128 jailbreak donor in bf16), so
    a half-precision donor's answers stay what :meth:`~commandv_interp.access.ModelAccess.generate_ids` gives.
    ``share_prefix=False`` generates whole prompts every time (for comparison)."""
    prompts = list(prompts)
    teacher = teacher_of(adapter)
    ids = [list(row) for row in donor.tokenizer(prompts)["input_ids"]]
    if not (share_prefix and isinstance(teacher, Adapter) and teacher.positions == "last" and donor.supports_prefix
            and donor.dtype in (torch.float32, torch.float64) and not donor.active_edits
            and all(len(row) >= 2 for row in ids)):
        plain, plain_onsets = _greedy(donor, prompts, max_new_tokens, batch_size, whole_words=True)
        with torch.no_grad(), teaching(donor, adapter):
            adapted, adapted_onsets = _greedy(donor, prompts, max_new_tokens, batch_size, whole_words=True)
        return AnswerPair(adapted, plain, adapted_onsets, plain_onsets)
    out: dict[bool, tuple[list[str], list[str]]] = {False: ([], []), True: ([], [])}
    for start, batch in zip(range(0, len(prompts), batch_size), batches(donor, prompts, batch_size)):
        check_fits_context(donor, batch, max_new_tokens)
        part = ids[start:start + batch_size]
        states = donor.prefix_states([row[:-1] for row in part], batch_size)
        for with_adapter in (False, True):
            with torch.no_grad(), (teaching(donor, adapter) if with_adapter else contextlib.nullcontext()):
                new = donor.generate_suffix(states, range(len(part)), part, max_new_tokens)
            texts, firsts = _decoded(donor, new, whole_words=True)
            out[with_adapter][0].extend(texts)
            out[with_adapter][1].extend(firsts)
    return AnswerPair(out[True][0], out[False][0], out[True][1], out[False][1],
                      shared_tokens=sum(len(row) - 1 for row in ids))


def targets_from(prompts: Sequence[str], adapted: Sequence[str], plain: Sequence[str],
                 max_new_tokens: int | None = None) -> DonorTargets:
    """The target/foil pairs of the donor's answers with (``adapted``) and without (``plain``) its adapter (see the
    module doc); prompts left with no foil (unchanged, and no other prompt's answer changed to differ) are dropped.

    Raises:
        ValueError: the adapter changes none of the answers.
    """
    changed = [a != b for a, b in zip(adapted, plain)]
    moved = [a for a, c in zip(adapted, changed) if c]
    if not moved:
        limit = f"first {max_new_tokens} " if max_new_tokens is not None else ""
        raise ValueError(f"the donor's adapter changes none of the {len(prompts)} scoring prompts' {limit}"
                         "response tokens; pass prompts of the adapter's task (e.g. its training inputs) or a larger "
                         "max_new_tokens")
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


def onset_prompts(prompts: Sequence[str], adapted_onsets: Sequence[str], plain_onsets: Sequence[str]) -> list[str]:
    """Each prompt followed by the donor's first response token without and with its adapter (once when they agree;
    the tokens of an :class:`AnswerPair`).

    Profiled beside the plain prompts, these put into the fit the directions along which the start of the
    behavior moves both models' residual streams at the last token (the first word of a refusal, of a
    step-by-step solution): both models read the same text, so their states there are paired. Label-free: the
    words come from the donor itself."""
    if not len(prompts) == len(adapted_onsets) == len(plain_onsets):
        raise ValueError(f"need one onset of each kind per prompt, got {len(prompts)} prompts, "
                         f"{len(adapted_onsets)} and {len(plain_onsets)} onsets")
    out = []
    for prompt, a, b in zip(prompts, adapted_onsets, plain_onsets):
        out += [f"{prompt} {w}" for w in dict.fromkeys((b, a)) if w]
    return out


def greedy_responses(access: ModelAccess, prompts: list[str], max_new_tokens: int, batch_size: int,
                     whole_words: bool = False) -> list[str]:
    """Greedy responses of ``access`` under its active edits (decoded texts, in batches of ``batch_size``), each
    ending at the end of sequence, at its first newline, or after ``max_new_tokens`` tokens.

    With ``whole_words`` a response that ran to ``max_new_tokens`` without ending loses its last word, which the
    cut may have split (``"... how to wea"``): another tokenizer re-tokenizes a split word unlike the model that
    would have finished it, so a recipient could never agree with it, and a distillation would teach the fragment.
    """
    return _greedy(access, prompts, max_new_tokens, batch_size, whole_words)[0]


def _greedy(access: ModelAccess, prompts: list[str], max_new_tokens: int, batch_size: int,
            whole_words: bool) -> tuple[list[str], list[str]]:
    """:func:`greedy_responses` and each response's first token as a one-token response would read."""
    out: list[str] = []
    first: list[str] = []
    for batch in batches(access, prompts, batch_size):
        texts, firsts = _decoded(access, access.generate_ids(batch, max_new_tokens=max_new_tokens), whole_words)
        out += texts
        first += firsts
    return out, first


def _decoded(access: ModelAccess, ids: Int[Tensor, "batch new"], whole_words: bool) -> tuple[list[str], list[str]]:
    """Generated ids as responses (cut at EOS or the first newline; see :func:`greedy_responses`) and their first
    tokens."""
    eos = access.tokenizer.eos_token_id
    out = []
    for row, text in zip(ids.tolist(), access.decode_continuations(ids)):
        ended = eos in row or "\n" in text
        text = text.split("\n", 1)[0].strip()
        out.append(text.rsplit(" ", 1)[0] if whole_words and not ended and " " in text else text)
    return out, [text.split("\n", 1)[0].strip() for text in access.decode_continuations(ids[:, :1])]


def behavior_span(adapted: Sequence[str], plain: Sequence[str]) -> tuple[list[str], list[str], int]:
    """The donor's answers with (``adapted``) and without (``plain``) its adapter cut to the length of the behavior:
    the upper quartile of the word counts of the adapted answers that differ from the plain ones from their first
    word on (else of all that differ). A refusal (``"sorry . i can not help with that ."``) stays whole and a benign
    answer keeps as many words, not the tail where the donor's own knowledge shows (which tool, which object) and no
    paste could follow it; a step-by-step solution keeps its steps and final answer. The quartile, not the longest,
    so that a few long answers the adapter changed the other way (a spontaneous refusal it undid) do not set the
    length. Whole words: nothing is split.

    Returns:
        ``(adapted, plain, words)``: the cut answers and the length in words (0 when no answer differs).
    """
    first = lambda text: text.split()[:1]  # noqa: E731
    moved = [a for a, b in zip(adapted, plain) if a != b]
    onset = [a for a, b in zip(adapted, plain) if first(a) != first(b)]
    if not moved:
        return list(adapted), list(plain), 0
    lengths = sorted(len(a.split()) for a in (onset or moved))
    words = max(1, lengths[-(-3 * (len(lengths) - 1) // 4)])  # the upper quartile (rounded up)
    cut = lambda text: " ".join(text.split()[:words])  # noqa: E731
    return [cut(a) for a in adapted], [cut(b) for b in plain], words


def answer_limit(access: ModelAccess, prompts: Sequence[str], cap: int = ANSWER_CAP) -> int:
    """The new tokens an answer may take: ``cap``, or fewer where the longest prompt and the answer would not fit
    the model's context (at least 1)."""
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {cap!r}")
    context = context_length(access)
    if context is None:
        return cap
    longest = max(len(ids) for ids in access.tokenizer(list(prompts))["input_ids"])
    return max(1, min(cap, context - longest))


def answer_labels(batch: Batch, prompt_lens: Sequence[int], lengths: Sequence[int]) -> Int[Tensor, "batch pos"]:
    """The targets of a next-token loss on the answers of :func:`response_sequences`: each row's ids from its prompt
    length to its length, -100 elsewhere (on the batch's device)."""
    labels = torch.full(batch.input_ids.shape, -100, dtype=torch.long, device=batch.input_ids.device)
    for row, (p, n) in enumerate(zip(prompt_lens, lengths)):
        labels[row, p:n] = batch.input_ids[row, p:n]
    return labels


def at_prompt_end(per_layer: dict[int, list[DeltaFn]], prompt_lens: Sequence[int], alpha: float) -> dict:
    """Edits adding ``α Σ f(h)`` at each row's last prompt token of a teacher-forced batch (prompt + response)."""
    rows = torch.arange(len(prompt_lens))
    cols = torch.tensor([n - 1 for n in prompt_lens])

    def make(fns: list[DeltaFn]) -> Callable[[Tensor, EditContext], Tensor]:
        def edit(hidden: Tensor, ctx: EditContext) -> Tensor:
            r, c = rows.to(hidden.device), cols.to(hidden.device)
            h = hidden[r, c]
            out = hidden.clone()
            wide = h.to(torch.promote_types(h.dtype, torch.float32))  # one rounding, as the paste
            out[r, c] = (wide + alpha * sum(fn(h.float()) for fn in fns)).to(hidden.dtype)
            return out

        edit.acts_on_decode = False
        return edit

    return {layer: make(fns) for layer, fns in per_layer.items()}


@dataclass(frozen=True)
class ResponseScores:
    """Per scoring prompt, under one paste: ``target_loglik`` = log P(target) (summed over its tokens),
    ``agreement`` = the share of the target's tokens the recipient reproduces greedily before its first divergence,
    and, when the foils were scored too, ``foil_loglik`` = log P(foil)."""

    target_loglik: Float[Tensor, " n"]
    agreement: Float[Tensor, " n"]
    foil_loglik: Float[Tensor, " n"] | None = None

    @property
    def margin(self) -> Float[Tensor, " n"]:
        """``log P(target) − log P(foil)`` per prompt (needs the foils scored)."""
        if self.foil_loglik is None:
            raise ValueError("these scores were computed without the foils (foil=False); score_responses(..., "
                             "foil=True) gives the margin")
        return self.target_loglik - self.foil_loglik

    def take(self, rows: Sequence[int]) -> "ResponseScores":
        """The scores of some prompts (by index)."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return ResponseScores(self.target_loglik[idx], self.agreement[idx],
                              None if self.foil_loglik is None else self.foil_loglik[idx])


def score_responses(recipient: ModelAccess, targets: DonorTargets,
                    per_layer: dict[int, list[DeltaFn]] | None = None, alpha: float = 1.0,
                    batch_size: int = 32, foil: bool = True, rows: Sequence[int] | None = None,
                    passes: ForcedPasses | None = None) -> ResponseScores:
    """Score the target (and, with ``foil``, the foil) responses teacher-forced under the pasted deltas
    ``per_layer`` (recipient layer → delta functions, e.g. :func:`~commandv_interp.converters.pasted_deltas`) at
    scale ``alpha``, acting at the last prompt token; ``None`` scores the plain recipient. ``rows`` scores only
    those scoring prompts (by index; the result is in that order). ``passes`` (a
    :class:`~commandv_interp.pipeline.forced_passes.ForcedPasses` over ``targets.prompts``) runs the passes from
    the prompts' prefix states where it keeps them: the same scores."""
    idx = list(range(len(targets.prompts))) if rows is None else list(rows)
    if passes is not None and passes.prompts != tuple(targets.prompts):
        raise ValueError("passes must be over the targets' prompts, in their order")
    passes = passes if passes is not None else ForcedPasses(recipient, targets.prompts, cache=False)
    results = []
    for texts in (targets.target, targets.foil) if foil else (targets.target,):
        texts = [texts[i] for i in idx]
        parts = [_loglik(passes, idx[start:start + batch_size], texts[start:start + batch_size], per_layer, alpha)
                 for start in range(0, len(idx), batch_size)]
        results.append((torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])))
    (target_ll, target_agree) = results[0]
    return ResponseScores(target_ll, target_agree, results[1][0] if foil else None)


def _loglik(passes: ForcedPasses, rows: Sequence[int], responses: Sequence[str],
            per_layer: dict[int, list[DeltaFn]] | None, alpha: float) -> tuple[Tensor, Tensor]:
    """Summed log-likelihood of each response and its greedy prefix agreement (see :class:`ResponseScores`)."""
    batch, prompt_lens, lengths = passes.sequences(rows, responses)
    edits = at_prompt_end(per_layer, prompt_lens, alpha) if per_layer else {}
    with torch.no_grad(), passes.recipient.edited(edits):
        logits = passes.logits(rows, batch).float()
    nxt = batch.input_ids[:, 1:].to(logits.device)
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, nxt[..., None])[..., 0]
    hits = logits[:, :-1].argmax(-1) == nxt
    ll, agree = [], []
    for i, (p, n) in enumerate(zip(prompt_lens, lengths)):
        ll.append(logp[i, p - 1:n - 1].sum())  # the predictions of the response tokens
        row = hits[i, p - 1:n - 1]
        misses = (~row).nonzero()
        prefix = int(misses[0]) if len(misses) else int(row.numel())
        agree.append(torch.tensor(prefix / max(int(row.numel()), 1)))
    return torch.stack(ll).cpu().double(), torch.stack(agree).double()


def _balanced(values: Tensor, changed: Sequence[bool]) -> dict[str, float]:
    mask = torch.tensor(list(changed), dtype=torch.bool)
    return {"changed": float(values[mask].mean()) if mask.any() else math.nan,
            "unchanged": float(values[~mask].mean()) if (~mask).any() else math.nan}


def summarize(scores: ResponseScores, changed: Sequence[bool], reference: ResponseScores | None = None
              ) -> dict[str, float]:
    """The criterion and its parts: ``criterion`` = balanced mean of the greedy prefix agreement over changed and
    unchanged prompts (each group one half when both occur), with each group's value. With the foils scored,
    ``preference`` = the same balance of ``sigmoid(margin)``; with ``reference`` (the plain recipient's scores on
    the same prompts), ``lift`` = the same balance of ``sigmoid(log P(target) − log P_reference(target))``: how far
    the paste raised the donor+adapter's answer over what the recipient gave it alone (0.5: no change). Either one
    breaks ties: it still moves when no generation changes yet."""
    out = _parts("criterion", "agree", _balanced(scores.agreement, changed))
    if scores.foil_loglik is not None:
        out |= _parts("preference", "pref", _balanced(torch.sigmoid(scores.margin.double()), changed))
    if reference is not None:
        if reference.target_loglik.shape != scores.target_loglik.shape:
            raise ValueError(f"the reference scores {tuple(reference.target_loglik.shape)} are not of the same "
                             f"prompts as the scores {tuple(scores.target_loglik.shape)}; score both on the same rows")
        gain = scores.target_loglik.double() - reference.target_loglik.double()
        out |= _parts("lift", "lift", _balanced(torch.sigmoid(gain), changed))
    return out


def _parts(name: str, prefix: str, groups: dict[str, float]) -> dict[str, float]:
    vals = [v for v in groups.values() if not math.isnan(v)]
    return {name: sum(vals) / len(vals), f"{prefix}_changed": groups["changed"],
            f"{prefix}_unchanged": groups["unchanged"]}
