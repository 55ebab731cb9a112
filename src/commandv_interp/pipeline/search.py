"""Consumes a donor, a recipient, the donor's :class:`Adapter` and unlabeled prompts of its task,
produces what every label-free candidate is built and scored from (:class:`SearchSetup`) and the engine that scores
candidates (:class:`CandidateSearch`).

:func:`prepare` has the donor answer every prompt with and without its adapter
(:func:`~commandv_interp.pipeline.agreement.donor_answers`), splits the prompts into a fitting and a held-out scoring
set stratified on whether the adapter changed the answer (:func:`~commandv_interp.pipeline.split.stratified_split`:
enough unchanged prompts are scored to see a small false-refusal difference), keeps the scoring prompts' target/foil
pairs and the fitting prompts' adapted answers (what the polish learns), and profiles
both models on (at most ``PROFILE_PROMPTS`` of) the fitting prompts plus the same prompts followed by the donor's
first response token with and without the adapter, read off the same answers
(:func:`~commandv_interp.pipeline.agreement.onset_prompts`; each prompt's tokens run once, its onset rows from its
cached states: ``profile(..., share_prefixes=True)``), with the two layer maps (relative depth, similarity).

:class:`CandidateSearch` scores :class:`~commandv_interp.pipeline.candidates.Candidate` values (pastes and native
recipient adapters) by the donor-agreement criterion, teacher-forced on the donor+adapter's answers only (the *lift* over the plain recipient breaks ties),
and keeps each candidate's per-prompt scores: scoring a candidate on more prompts later (successive halving: every
candidate on the first half, the best on all) runs only the prompts not scored yet. Its passes start from the
scoring prompts' prefix states where the backend keeps them (:class:`~commandv_interp.pipeline.forced_passes.ForcedPasses`:
each runs the last prompt token and the target only). It counts the FLOPs of everything it runs (the prefix states
once, then each pass's tokens), so that a caller reports the cost of the whole search.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from commandv_interp.access import ModelAccess, forward_flops, open_model, token_flops
from commandv_interp.adapters import Adapter
from commandv_interp.correspondence import LayerMap, match_layers
from commandv_interp.pipeline.agreement import (ANSWER_CAP, DonorTargets, ResponseScores, answer_limit,
                                                answer_pair, behavior_span, onset_prompts, score_responses,
                                                summarize, targets_from)
from commandv_interp.pipeline.candidates import Candidate, rank
from commandv_interp.pipeline.forced_passes import ForcedPasses
from commandv_interp.pipeline.lora_teacher import DonorAnswers
from commandv_interp.pipeline.split import stratified_split
from commandv_interp.profiles import ActivationProfile, profile, profile_tokens
from commandv_interp.prompts import prompts_fingerprint

__all__ = ["SearchSetup", "CandidateSearch", "prepare", "check_transfer_prompts", "generation_flops", "MIN_PROMPTS",
           "PROFILE_PROMPTS", "REFERENCE"]

MIN_PROMPTS = 16  # a quarter held out for scoring leaves at least 12 to fit on
PROFILE_PROMPTS = 96  # fitting prompts profiled (with their onsets): the profiles' cost stays bounded as prompts grow
REFERENCE = "recipient (no paste)"  # the first row of every candidates table: the plain recipient


@dataclass
class SearchSetup:
    """The split, the donor's targets on the scoring prompts, the fitting profiles and layer maps.

    Attributes:
        fitting, scoring: the two disjoint prompt sets (stratified on whether the adapter changes the answer).
        profiled: the first ``PROFILE_PROMPTS`` fitting prompts (all of them when there are fewer).
        augmented: ``profiled`` followed by its onset prompts (what the profiles were taken on).
        targets: the donor's answers with and without its adapter on ``scoring``.
        fitting_answers, fitting_changed: the donor+adapter's answers on ``fitting`` and whether each differs from
            the plain donor's.
        donor_profile, recipient_profile: profiles over ``augmented`` (the donor's at the adapter's layers).
        layer_maps: ``{"depth": ..., "similarity": ...}`` for the adapter's layers.
        flops: the FLOPs spent so far (the donor's answers, which give the onsets too, and the profiles).
        donor_answers: the donor's answers with and without its adapter to every prompt, cut to the behavior span
            (what the split, the targets and the fitting answers were taken from; a transfer keeps them).
    """

    donor_model: ModelAccess
    recipient_model: ModelAccess
    adapter: Adapter
    fitting: list[str]
    scoring: list[str]
    profiled: list[str]
    augmented: list[str]
    targets: DonorTargets
    donor_profile: ActivationProfile
    recipient_profile: ActivationProfile
    layer_maps: dict[str, LayerMap]
    batch_size: int
    flops: float = 0.0
    fitting_answers: tuple[str, ...] = ()  # the donor+adapter's answers to ``fitting`` (what the polish learns)
    fitting_changed: tuple[bool, ...] = ()  # per fitting prompt, whether the adapter changed the donor's answer
    answer_tokens: int = 0  # the new tokens the donor's answers were generated with (the cap the contexts allow)
    answer_words: int = 0  # the behavior span the answers were cut to, in words (0: none differs)
    donor_answers: DonorAnswers | None = None

    def plain_profiles(self) -> tuple[ActivationProfile, ActivationProfile]:
        """The profiles' rows of the plain fitting prompts (no onset word): the paper's profile set."""
        rows, fingerprint = list(range(len(self.profiled))), prompts_fingerprint(self.profiled)
        return (self.donor_profile.subset(rows, fingerprint), self.recipient_profile.subset(rows, fingerprint))


def check_transfer_prompts(prompts: Sequence[str]) -> list[str]:
    """The distinct prompts, in order; refuses fewer than ``MIN_PROMPTS`` (a fitting and a scoring set are needed)."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of prompts, got a single string; wrap it in a list")
    distinct = list(dict.fromkeys(prompts))
    if len(distinct) < MIN_PROMPTS:
        raise ValueError(f"transfer needs at least {MIN_PROMPTS} distinct prompts of the adapter's task, got "
                         f"{len(distinct)}; pass more (e.g. the adapter's training inputs)")
    return distinct


def prepare(donor_model: ModelAccess, recipient_model: ModelAccess, adapter: Adapter, prompts: Sequence[str],
            scoring_fraction: float = 0.25, max_new_tokens: int = ANSWER_CAP, batch_size: int = 32,
            seed: int = 0, profile_prompts: int = PROFILE_PROMPTS) -> SearchSetup:
    """Split ``prompts``, take the donor's targets on the scoring part and profile both models on the fitting part
    (see the module doc). The donor's answers are whole (up to EOS or a newline), at most ``max_new_tokens`` tokens
    and what either model's context leaves after the longest prompt. Forward passes only; the FLOPs are counted in
    ``flops``."""
    donor, recipient = open_model(donor_model), open_model(recipient_model)
    prompts = check_transfer_prompts(prompts)
    if not (isinstance(scoring_fraction, float | int) and 0 < scoring_fraction < 1):
        raise ValueError(f"scoring_fraction must be in (0, 1), got {scoring_fraction!r}")
    max_new_tokens = min(answer_limit(model, prompts, max_new_tokens) for model in (donor, recipient))
    answers = answer_pair(donor, adapter, prompts, max_new_tokens, batch_size)
    adapted, plain = answers.adapted, answers.plain
    flops = sum(forward_flops(donor, [f"{p} {a}" for p, a in zip(prompts, texts)])  # a cached generation: one
                for texts in (adapted, plain)) - token_flops(donor, answers.shared_tokens)  # pass over each
    # prompt and answer token, the prompts' tokens before their last once where both generations shared them
    adapted, plain, words = behavior_span(adapted, plain)
    judged = DonorAnswers(tuple(prompts), tuple(adapted), tuple(plain), (max_new_tokens, words), flops)
    changed = [a != b for a, b in zip(adapted, plain)]
    targets_from(prompts, adapted, plain, max_new_tokens)  # refuses an adapter that changes no answer
    score_rows, fit_rows = stratified_split(changed, scoring_fraction, seed)
    scoring, fitting = [prompts[i] for i in score_rows], [prompts[i] for i in fit_rows]
    targets = targets_from(scoring, [adapted[i] for i in score_rows], [plain[i] for i in score_rows], max_new_tokens)
    profiled_rows = fit_rows[:profile_prompts]
    profiled = [prompts[i] for i in profiled_rows]
    augmented = profiled + onset_prompts(profiled, [answers.adapted_onsets[i] for i in profiled_rows],
                                         [answers.plain_onsets[i] for i in profiled_rows])
    p_donor = profile(donor, augmented, layers=adapter.layers, batch_size=batch_size, progress=False,
                      share_prefixes=True)
    p_recipient = profile(recipient, augmented, batch_size=batch_size, progress=False, share_prefixes=True)
    flops += (token_flops(donor, profile_tokens(donor, augmented, share_prefixes=True), max(adapter.layers))
              + token_flops(recipient, profile_tokens(recipient, augmented, share_prefixes=True),
                            recipient.n_layers - 1))
    maps = {match: match_layers(p_donor, p_recipient, match, adapter.layers) for match in ("depth", "similarity")}
    return SearchSetup(donor, recipient, adapter, fitting, scoring, profiled, augmented, targets, p_donor, p_recipient,
                       maps, batch_size, flops, tuple(adapted[i] for i in fit_rows),
                       tuple(changed[i] for i in fit_rows), max_new_tokens, words, judged)


@dataclass
class _Scored:
    rows: list[int]
    scores: ResponseScores


@dataclass
class CandidateSearch:
    """Candidates scored by donor agreement on the scoring prompts, their rows, and the FLOPs spent.

    :meth:`score` scores a :class:`~commandv_interp.pipeline.candidates.Candidate` on the first ``n`` scoring
    prompts, reusing what it scored of the same candidate (by name) before; :meth:`table` has one row per
    :meth:`score` call, the first one the plain recipient (:data:`REFERENCE`, for reference); :meth:`best` applies
    the one ranking rule, :func:`~commandv_interp.pipeline.candidates.rank`.
    """

    setup: SearchSetup
    flops: float = 0.0
    rows: list[dict] = field(default_factory=list)
    scored: dict[str, Candidate] = field(default_factory=dict)  # every candidate scored, by name
    _cache: dict[str, _Scored] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.flops = self.setup.flops
        targets = self.setup.targets
        self._passes = ForcedPasses(self.setup.recipient_model, targets.prompts, self.setup.batch_size)
        batch, _, _ = self._passes.sequences(range(len(targets.prompts)), targets.target)
        self._row_flops = [token_flops(self.setup.recipient_model, int(n)) for n in batch.attention_mask.sum(1)]
        self.rows.append(self._row({"candidate": REFERENCE, "stage": 0, "method": "none", "match": "none",
                                    "layers": "", "polish_steps": 0, "polish_lr": None,
                                    "polish_budget_flops": None, "paper_exact": False,
                                    "fit_flops": 0.0,
                                    "fit_s": 0.0}, None, self.n_scoring))

    @property
    def n_scoring(self) -> int:
        return len(self.setup.targets.prompts)

    def score(self, candidate: Candidate, n: int | None = None) -> dict:
        """Score ``candidate`` on the first ``n`` scoring prompts (all by default); its row is returned."""
        if candidate.name == REFERENCE:
            raise ValueError(f"{REFERENCE!r} names the plain recipient; give the candidate another name")
        self.scored[candidate.name] = candidate
        row = self._row(candidate.columns(), candidate,
                        self.n_scoring if n is None else min(n, self.n_scoring))
        self.rows.append(row)
        return row

    def _row(self, columns: dict, candidate: Candidate | None, n: int) -> dict:
        t0, flops0 = time.perf_counter(), self.flops
        reference = self._scored(REFERENCE, None, n)
        got = self._scored(candidate.name, candidate, n) if candidate is not None else reference
        changed = self.setup.targets.changed[:n]
        return {**columns, **summarize(got.scores.take(range(n)), changed, reference.scores.take(range(n))),
                "n_scoring": n, "n_changed": sum(changed), "score_flops": self.flops - flops0,
                "score_s": time.perf_counter() - t0}

    def _scored(self, name: str, candidate: Candidate | None, n: int) -> _Scored:
        have = self._cache.get(name)
        done = have.rows if have is not None else []
        seen = set(done)
        todo = [i for i in range(n) if i not in seen]
        if todo:
            deltas = candidate.deltas(self.setup.recipient_model) if candidate is not None else None
            spent0 = self._passes.state_flops + self._passes.pass_flops
            new = score_responses(self.setup.recipient_model, self.setup.targets, deltas, 1.0, self.setup.batch_size,
                                  foil=False, rows=todo, passes=self._passes)
            self.flops += self._passes.state_flops + self._passes.pass_flops - spent0
            if have is not None:
                new = ResponseScores(torch.cat([have.scores.target_loglik, new.target_loglik]),
                                     torch.cat([have.scores.agreement, new.agreement]))
            have = _Scored(done + todo, new)
            self._cache[name] = have
        order = sorted(range(len(have.rows)), key=lambda j: have.rows[j])
        return _Scored(sorted(have.rows), have.scores.take(order))

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def score_cost(self) -> float:
        """The FLOPs of scoring a new candidate on all the scoring prompts in whole passes from the first block: an
        upper bound (a candidate's passes start from its lowest edited block where the prefix states are kept)."""
        return sum(self._row_flops)

    def best(self, n: int | None = None, stage: int | None = None) -> Candidate:
        """The best candidate (by :func:`~commandv_interp.pipeline.candidates.rank`) among the rows scored on at
        least ``n`` prompts (all by default), of ``stage`` when given; the plain recipient and the paper-exact
        reference row never win."""
        table = self.table()
        keep = (table.n_scoring >= (self.n_scoring if n is None else n)) & (table.stage > 0) \
            & ~table.paper_exact.astype(bool)
        if stage is not None:
            keep &= table.stage == stage
        if not keep.any():
            raise ValueError("no candidate was scored on enough prompts to choose from")
        return self.scored[str(rank(table[keep]).iloc[0].candidate)]

    def row(self, candidate: Candidate) -> dict:
        """The latest row of ``candidate`` (by name)."""
        return next(r for r in reversed(self.rows) if r["candidate"] == candidate.name)


def generation_flops(access: ModelAccess, prompts: Sequence[str], new_tokens: int) -> float:
    """A greedy generation with a KV cache: the prompt pass plus one token per new token and prompt."""
    params_pass = forward_flops(access, prompts)
    tokens = sum(len(ids) for ids in access.tokenizer(list(prompts))["input_ids"])
    return params_pass * (1 + new_tokens * len(prompts) / max(tokens, 1))
