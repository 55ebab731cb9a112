"""Consumes a donor with its edit, unlabeled prompts and a transfer's answer span (or the answers a transfer
judged and kept), produces what a recipient LoRA is distilled from and judged by: the teacher's answers on the
fitting prompts (cut as the transfer cut them), whether the edit changed each, the target/foil pairs on the held-out
scoring prompts, and the donor-agreement criterion of the recipient under a LoRA on those.

The answers are the ones :func:`~commandv_interp.pipeline.search.prepare` judges a transfer by
(:class:`DonorAnswers`, kept by the :class:`~commandv_interp.pipeline.result.Transfer`): greedy, whole words,
at most the span's new tokens, then cut to the span's words (:func:`~commandv_interp.pipeline.agreement.behavior_span`
derives the span when none is given), and the fitting/scoring split is the transfer's
(:func:`~commandv_interp.pipeline.split.stratified_split` on the same flags and seed): on the prompts a transfer was
made with, a LoRA learns exactly the answers its polish learned and is scored on exactly its scoring prompts.
Given the answers a transfer kept for exactly those prompts, :func:`teacher_answers` splits them without generating
anything (the transfer paid for them).
A LoRA acts at every position, so the criterion is :func:`~commandv_interp.pipeline.agreement.score_responses` of the
plain recipient with the LoRA's hooks on: the greedy prefix agreement of the teacher-forced answers is then exactly
how far a greedy generation under the LoRA follows the donor+edit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from commandv_interp.access import ModelAccess, forward_flops
from commandv_interp.adapters import Adapter
from commandv_interp.adapters.edit import Edit
from commandv_interp.adapters.lora import LoraEdit, lora_applied
from commandv_interp.adapters.surrogate import teacher_of
from commandv_interp.pipeline.agreement import (ANSWER_CAP, DonorTargets, answer_limit, behavior_span,
                                                greedy_responses, score_responses, summarize, targets_from, teaching)
from commandv_interp.pipeline.split import stratified_split

__all__ = ["DonorAnswers", "TeacherAnswers", "generate_answers", "split_answers", "teacher_answers", "lora_criterion",
           "scoring_flops", "check_teacher"]

ANSWERS_KIND = "commandv.donor_answers"


@dataclass(frozen=True)
class DonorAnswers:
    """The donor's greedy answers with (``adapted``) and without (``plain``) its edit to every prompt of a transfer,
    cut as its criterion judged them (what :func:`~commandv_interp.pipeline.search.prepare` generated).

    Attributes:
        prompts: the distinct prompts, in order (their fingerprint is the transfer's prompts fingerprint).
        adapted, plain: per prompt, the donor+edit's and the plain donor's answer, cut to the span's words.
        span: ``(tokens, words)``: the new tokens generated and the words the answers were cut to (0: not cut).
        flops: what generating them cost (paid by whoever generated them: the transfer, when it keeps them).
    """

    prompts: tuple[str, ...]
    adapted: tuple[str, ...]
    plain: tuple[str, ...]
    span: tuple[int, int]
    flops: float

    @property
    def changed(self) -> tuple[bool, ...]:
        """Per prompt, whether the edit changed the donor's (cut) answer."""
        return tuple(a != b for a, b in zip(self.adapted, self.plain))

    def to_dict(self) -> dict:
        return {"kind": ANSWERS_KIND, "prompts": list(self.prompts), "adapted": list(self.adapted),
                "plain": list(self.plain), "changed": list(self.changed), "span": list(self.span),
                "flops": self.flops}

    @classmethod
    def from_dict(cls, data: object, where: str) -> DonorAnswers:
        """Read :meth:`to_dict`'s form, refusing anything else (``where`` names the file in the message)."""
        texts = lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)  # noqa: E731
        ok = (isinstance(data, Mapping) and data.get("kind") == ANSWERS_KIND
              and all(texts(data.get(k)) for k in ("prompts", "adapted", "plain"))
              and len({len(data["prompts"]), len(data["adapted"]), len(data["plain"])}) == 1
              and isinstance(data.get("span"), list) and len(data["span"]) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in data["span"])
              and isinstance(data.get("flops"), int | float) and not isinstance(data.get("flops"), bool))
        if not ok:
            raise ValueError(f"{where} is not the donor's answers of a transfer (kind {ANSWERS_KIND!r}: prompts, "
                             "adapted and plain answers of one length, span and flops)")
        answers = cls(tuple(data["prompts"]), tuple(data["adapted"]), tuple(data["plain"]),
                      (data["span"][0], data["span"][1]), float(data["flops"]))
        if data.get("changed") != list(answers.changed):
            raise ValueError(f"{where}: its changed flags disagree with its answers")
        return answers


@dataclass(frozen=True)
class TeacherAnswers:
    """The donor+edit's answers, split as a transfer splits them.

    Attributes:
        fitting, answers, changed: the fitting prompts, the teacher's (cut) answers to them and whether the edit
            changed each (what the LoRA trains on).
        targets: the target/foil pairs on the scoring prompts (what each round is scored on).
        span: ``(tokens, words)``: the new tokens generated and the words the answers were cut to (0: not cut).
        flops: the teacher's generations (with and without the edit) spent here, counted as a cached generation:
            one pass over each prompt and its answer (0 when ``reused``).
        reused: whether the answers were a transfer's kept :class:`DonorAnswers` (nothing generated).
    """

    fitting: tuple[str, ...]
    answers: tuple[str, ...]
    changed: tuple[bool, ...]
    targets: DonorTargets
    span: tuple[int, int]
    flops: float
    reused: bool = False


def check_teacher(edit: Edit) -> None:
    """Refuse a surrogate that lost its teacher (a transfer loaded from disk keeps the surrogate of a LoRA or
    steering vector, not the edit itself): its own answers are not the donor+edit's."""
    if isinstance(edit, Adapter) and teacher_of(edit) is edit and "surrogate_of" in edit.metadata:
        raise ValueError(f"this donor edit is the last-token surrogate of a {edit.metadata['surrogate_of']!r} edit "
                         "(a transfer loaded from disk keeps the surrogate only), and a LoRA distilled from it would "
                         "not learn the edit's answers; pass the donor's edit itself: "
                         "Transfer.to_peft(..., teacher=cv.load_edit(path))")


def generate_answers(donor: ModelAccess, recipient: ModelAccess, edit: Edit, prompts: Sequence[str],
                     answer_span: tuple[int, int] | None = None, batch_size: int = 32) -> DonorAnswers:
    """The donor's answers to ``prompts`` with and without ``edit``, generated and cut as a transfer's (see the module
    doc; ``answer_span`` as :func:`teacher_answers` takes it); their ``flops`` are the two generations'."""
    prompts = list(prompts)
    tokens, words = answer_span if answer_span is not None and answer_span[0] > 0 else (0, 0)
    if tokens == 0:
        tokens = min(answer_limit(model, prompts, ANSWER_CAP) for model in (donor, recipient))
    plain = greedy_responses(donor, prompts, tokens, batch_size, whole_words=True)  # as donor_answers, any edit
    with teaching(donor, edit):
        adapted = greedy_responses(donor, prompts, tokens, batch_size, whole_words=True)
    flops = sum(forward_flops(donor, [f"{p} {a}" for p, a in zip(prompts, texts)]) for texts in (adapted, plain))
    if answer_span is not None and answer_span[0] > 0:
        adapted, plain = ([" ".join(t.split()[:words]) for t in texts] if words else list(texts)
                          for texts in (adapted, plain))
    else:
        adapted, plain, words = behavior_span(adapted, plain)
    return DonorAnswers(tuple(prompts), tuple(adapted), tuple(plain), (tokens, words), flops)


def split_answers(answers: DonorAnswers, scoring_fraction: float = 0.25, seed: int = 0,
                  reused: bool = False) -> TeacherAnswers:
    """``answers`` split as a transfer splits them: the fitting prompts' answers and flags, the scoring prompts'
    target/foil pairs (``reused``: they were kept by a transfer, so no FLOPs are counted here).

    Raises:
        ValueError: the edit changes none of the answers.
    """
    prompts, adapted, plain, changed = answers.prompts, answers.adapted, answers.plain, answers.changed
    tokens = answers.span[0]
    targets_from(prompts, adapted, plain, tokens)  # refuses an edit that changes no answer
    score_rows, fit_rows = stratified_split(changed, scoring_fraction, seed)
    targets = targets_from([prompts[i] for i in score_rows], [adapted[i] for i in score_rows],
                           [plain[i] for i in score_rows], tokens)
    return TeacherAnswers(tuple(prompts[i] for i in fit_rows), tuple(adapted[i] for i in fit_rows),
                          tuple(changed[i] for i in fit_rows), targets, answers.span,
                          0.0 if reused else answers.flops, reused)


def teacher_answers(donor: ModelAccess, recipient: ModelAccess, edit: Edit, prompts: Sequence[str],
                    answer_span: tuple[int, int] | None = None, scoring_fraction: float = 0.25, seed: int = 0,
                    batch_size: int = 32, kept: DonorAnswers | None = None) -> TeacherAnswers:
    """The donor+edit's answers to ``prompts`` and the transfer's split of them (see the module doc).

    Args:
        donor, recipient: the two models (the recipient's context bounds the answers, as in a transfer).
        edit: the donor's edit (a surrogate answers as its teacher).
        prompts: distinct unlabeled prompts.
        answer_span: a transfer's ``(tokens, words)`` (:attr:`~commandv_interp.pipeline.result.Transfer.answer_span`);
            None or ``(0, 0)``: whole answers of at most ``ANSWER_CAP`` tokens, cut to the behavior span.
        scoring_fraction, seed: the split (a transfer's ``config.scoring_fraction`` and ``config.seed``).
        kept: the answers a transfer judged (:attr:`~commandv_interp.pipeline.result.Transfer.donor_answers`): split
            as they are, nothing generated, when they answer exactly ``prompts`` (else the answers are generated).

    Raises:
        ValueError: the edit changes none of the answers.
    """
    if kept is not None and kept.prompts == tuple(prompts):
        return split_answers(kept, scoring_fraction, seed, reused=True)
    return split_answers(generate_answers(donor, recipient, edit, prompts, answer_span, batch_size),
                         scoring_fraction, seed)


def lora_criterion(recipient: ModelAccess, targets: DonorTargets, lora: LoraEdit, batch_size: int = 32
                   ) -> tuple[float, float]:
    """The recipient's donor-agreement criterion under ``lora`` on the scoring prompts (balanced over changed and
    unchanged prompts, :func:`~commandv_interp.pipeline.agreement.summarize`) and, to break ties, the mean
    log-likelihood of the targets. Forward passes only."""
    with torch.no_grad(), lora_applied(recipient, lora):
        scores = score_responses(recipient, targets, None, batch_size=batch_size, foil=False)
    return summarize(scores, targets.changed)["criterion"], float(scores.target_loglik.mean())


def scoring_flops(recipient: ModelAccess, targets: DonorTargets) -> float:
    """The FLOPs of one :func:`lora_criterion`: a forward pass over each scoring prompt and its target."""
    return forward_flops(recipient, [f"{p} {t}" for p, t in zip(targets.prompts, targets.target)])
