"""Consumes a donor and a recipient model, the donor's :class:`Adapter` and unlabeled prompts of
its task, produces a :class:`~commandv_interp.pipeline.result.Transfer`: an edit chosen without behavior labels, with
everything it considered, the configuration it ran with and the fingerprints of what it was made from.

:func:`transfer` runs the algorithm's stages, one function each:

0. :func:`~commandv_interp.pipeline.search.prepare`: a fitting and a held-out scoring split, the donor's answers
   with and without its adapter on the scoring prompts, both models profiled on the fitting prompts and on the same
   prompts followed by the donor's first response word;
1. :func:`_fits`: adapter-aware ``interface`` converters by relative depth and by similarity, ridge and Procrustes
   converters by relative depth, and the paper-exact pinv (plain prompts, relative depth) as a reference row, each
   a :class:`~commandv_interp.pipeline.candidates.Candidate` scored by the donor-agreement criterion of
   :mod:`~commandv_interp.pipeline.agreement` on the first half of the scoring prompts; then :func:`_layer_subsets`:
   the best of them restricted to each of the adapter's layers alone and to all but one (a layer whose pasted delta
   garbles the recipient's answers is left out);
2. :func:`_finalist`: the best stage-1 paste scored on all the scoring prompts;
3. :func:`_polish` (:mod:`~commandv_interp.pipeline.polish`, :mod:`~commandv_interp.pipeline.polish_race`): the
   finalist compiled to a native recipient adapter, and beside it a fresh adapter at the depth-matched layers, are
   trained in rounds to reproduce the donor+adapter's answers on the fitting prompts (distillation from the donor
   itself: no labels); both try the same learning rates, the best held-out trial goes on while the criterion
   improves (and, if it never beats the unedited recipient, the other start's best trial after it), within a FLOPs
   budget; each round is a candidate scored on all the scoring prompts (skipped when the finalist already
   reproduces every scoring answer). Its steps, like every scoring, run from the prompts' cached prefix states
   where the backend keeps them (:mod:`~commandv_interp.pipeline.forced_passes`);
4. :func:`~commandv_interp.pipeline.scale.choose_scale` (``scale_search``, on by default): the best candidate, when
   it is a polished adapter, scored at a few scales around 1; the middle of the range of scales whose criterion is
   within one scoring prompt of the best is chosen (a polish of a few dozen steps leaves the scale least settled);
5. :meth:`~commandv_interp.pipeline.result.Transfer.from_search`: that candidate (without the scale search: the best
   candidate scored on all the scoring prompts, by the one ranking rule
   :func:`~commandv_interp.pipeline.candidates.rank`).

Every paste is at α = 1 (the polish learns the scale). Forward passes only, except the polish's few training steps,
whose FLOPs are counted as a finetune's are. ``start="scratch"`` skips stages 1 and 2 and polishes a fresh adapter:
the distillation baseline that shows what the paste contributes.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence

from tqdm.auto import tqdm

from commandv_interp.access import ModelAccess
from commandv_interp.adapters import Adapter
from commandv_interp.adapters.edit import Edit
from commandv_interp.adapters.layer_subsets import proper_subsets
from commandv_interp.adapters.linear_form import has_linear_form
from commandv_interp.adapters.surrogate import pasteable
from commandv_interp.converters import fit_converters
from commandv_interp.paste import compile_paste
from commandv_interp.pipeline.agreement import ANSWER_CAP
from commandv_interp.pipeline.blind import warn_if_blind
from commandv_interp.pipeline.candidates import Candidate, Cost, native_deltas
from commandv_interp.pipeline.config import STARTS, TransferConfig
from commandv_interp.pipeline.fingerprints import Fingerprints
from commandv_interp.pipeline.forced_passes import ForcedPasses
from commandv_interp.pipeline.polish import (POLISH_BUDGET, POLISH_STEPS, Distillation, finetune_flops_estimate,
                                             fresh_adapter)
from commandv_interp.pipeline.polish_race import PolishPlan, race
from commandv_interp.pipeline.result import Transfer
from commandv_interp.pipeline.scale import choose_scale
from commandv_interp.pipeline.search import MIN_PROMPTS, CandidateSearch, check_transfer_prompts, prepare

__all__ = ["transfer", "run_transfer", "check_transfer_prompts", "polishable", "native_deltas", "MIN_PROMPTS",
           "PAPER_EXACT", "STARTS"]

PAPER_EXACT = "pinv/depth"
"""The paper's configuration: pinv converters, relative depth, α = 1 (always among the candidates)."""
PROFILE_FITS = (("interface", "depth"), ("interface", "similarity"), ("ridge", "depth"), ("procrustes", "depth"),
                ("pinv", "depth"))


def transfer(
    donor_model: ModelAccess,
    recipient_model: ModelAccess,
    adapter: Edit,
    prompts: Sequence[str],
    scoring_fraction: float = 0.25,
    max_new_tokens: int = ANSWER_CAP,
    batch_size: int = 32,
    seed: int = 0,
    polish_steps: int = POLISH_STEPS,
    start: str = "paste",  # a Start; checked by TransferConfig with a clear message
    polish_budget: float = POLISH_BUDGET,
    progress: bool = True,
    scale_search: bool = True,
) -> Transfer:
    """Derive a working edit of ``adapter`` for the recipient without behavior labels (see the module doc).

    Args:
        donor_model, recipient_model: the two models (``ModelAccess`` or anything ``open_model`` accepts).
        adapter: the donor's ReFT adapter (linear-source kinds for the adapter-aware candidates), or a LoRA or
            steering vector (:func:`~commandv_interp.adapters.edit.load_edit`): its last-token NodiReFT surrogate
            is pasted and the edit itself is the teacher (:func:`~commandv_interp.adapters.surrogate.pasteable`).
        prompts: unlabeled prompts of the adapter's task (e.g. its training inputs), at least 16.
        scoring_fraction, max_new_tokens, batch_size, seed, polish_steps, start, polish_budget, scale_search: the
            settings, as
            :class:`~commandv_interp.pipeline.config.TransferConfig` documents them.
        progress: show a progress bar over the candidates.

    Returns:
        A :class:`~commandv_interp.pipeline.result.Transfer` with the chosen edit, its ``config`` and the tidy
        ``candidates`` table.

    Example:
        >>> t = transfer(donor, recipient, adapter, prompts)  # doctest: +SKIP
        >>> with t.paste():  # doctest: +SKIP
        ...     recipient.generate(recipient.encode(new_prompts))
    """
    config = TransferConfig(scoring_fraction=scoring_fraction, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            seed=seed, polish_steps=polish_steps, start=start, polish_budget=polish_budget,
                            scale_search=scale_search)
    return run_transfer(donor_model, recipient_model, adapter, prompts, config, progress)


def run_transfer(donor_model: ModelAccess, recipient_model: ModelAccess, adapter: Edit, prompts: Sequence[str],
                 config: TransferConfig, progress: bool = True) -> Transfer:
    """:func:`transfer` with every setting in ``config`` (what a saved transfer records and a replay runs again)."""
    began, edit = time.perf_counter(), adapter
    adapter = pasteable(donor_model, edit, prompts)  # a LoRA or steering vector: its surrogate, taught by it
    surrogate_flops = float(adapter.metadata.get("surrogate_flops", 0.0)) if adapter is not edit else 0.0
    if adapter.positions == "first_last":  # the criterion scores every candidate acting at the last prompt token
        raise ValueError(f"cv.transfer scores edits at the last prompt token, but this adapter acts at the first and "
                         f"last {adapter.first_last_k} positions: paste it step by step (cv.paste(..., "
                         f"positions='first_last', first_last_k={adapter.first_last_k}) or `commandv paste`) instead")
    if config.start == "scratch" and adapter.positions != "last":
        raise ValueError(f"start='scratch' learns everything in the polish, which acts at the last prompt token: "
                         f"pass a positions='last' adapter (got {adapter.positions!r}) or start='paste'")
    prompts = check_transfer_prompts(prompts)
    setup = prepare(donor_model, recipient_model, adapter, prompts, config.scoring_fraction, config.max_new_tokens,
                    config.batch_size, config.seed, config.profile_prompts)
    fingerprints = Fingerprints.of(setup.donor_model, setup.recipient_model, adapter, prompts)
    search = CandidateSearch(setup)
    finalist = None
    if config.start == "paste":
        half = math.ceil(search.n_scoring / 2)
        _fits(search, progress, half)
        _layer_subsets(search, half)
        finalist = _finalist(search, half)
    if config.polish_steps:
        _polish(search, finalist, config)
    chosen = choose_scale(search, search.best()) if config.scale_search else search.best()
    warn_if_blind(search, chosen)
    return Transfer.from_search(config, fingerprints, adapter, chosen, finalist, search.table(),
                                search.scored, search.flops + surrogate_flops, time.perf_counter() - began,
                                setup.recipient_model, (setup.answer_tokens, setup.answer_words),
                                setup.donor_answers)


def _fits(search: CandidateSearch, progress: bool, n: int) -> None:
    """Stage 1: one paste of the whole adapter per converter fit, scored on the first ``n`` scoring prompts."""
    setup, adapter = search.setup, search.setup.adapter
    plain_donor, plain_recipient = setup.plain_profiles()  # the paper's pinv uses these
    for method, match in tqdm(PROFILE_FITS, desc="transfer: stage 1", disable=not progress):
        t0 = time.perf_counter()
        if method == "pinv":
            converters = fit_converters(plain_donor, plain_recipient, setup.layer_maps[match], "pinv")
        else:
            converters = fit_converters(setup.donor_profile, setup.recipient_profile, setup.layer_maps[match], method,
                                        adapter)
        name = f"{method}/{match}"
        search.score(Candidate(name, 1, method, match, adapter, converters, Cost(0.0, time.perf_counter() - t0),
                               paper_exact=name == PAPER_EXACT), n)


def _layer_subsets(search: CandidateSearch, n: int) -> None:
    """Stage 1, continued: the best fit restricted to each proper subset of the adapter's layers."""
    lead = search.best(n, stage=1)
    for layers in proper_subsets(search.setup.adapter.layers):  # a layer whose pasted delta hurts is left out
        search.score(lead.restricted(layers), n)


def _finalist(search: CandidateSearch, n: int) -> Candidate:
    """Stage 2: the best stage-1 paste, scored on all the scoring prompts."""
    finalist = search.best(n, stage=1).at_stage(2)
    search.score(finalist)
    return finalist


def _polish(search: CandidateSearch, finalist: Candidate | None, config: TransferConfig) -> None:
    """Stage 3: distill the donor+adapter's answers on the fitting prompts into the finalist (compiled to a native
    recipient adapter) and, beside it, into a fresh adapter at the depth-matched layers
    (:func:`~commandv_interp.pipeline.polish_race.race`): both starts try the same learning rates in a first round,
    the best held-out trial goes on while the criterion improves, all within ``config.polish_budget`` × the estimated
    finetune's FLOPs. Every round is a stage-3 candidate scored on all scoring prompts."""
    setup = search.setup
    recipient, adapter = setup.recipient_model, setup.adapter
    if finalist is not None and not polishable(adapter):
        warnings.warn(f"the adapter acts at positions={adapter.positions!r} or has a kind without a linear form: "
                      "the paste is kept as it is (polish_steps needs a last-token adapter of a linear kind)",
                      stacklevel=3)
        return
    if finalist is not None and search.row(finalist)["criterion"] >= 1.0:  # it reproduces every answer already
        return
    answers, changed = list(setup.fitting_answers), list(setup.fitting_changed)
    layers = sorted(set(setup.layer_maps["depth"].restrict(adapter.layers).as_dict().values()))
    fresh = fresh_adapter(recipient, layers, _rank(adapter), config.seed)
    starts = {"scratch": Candidate("scratch", 3, "scratch", "depth", fresh)}
    if finalist is not None:
        native = compile_paste(finalist.edit, finalist.converters, "last", 1.0)
        starts = {finalist.name: Candidate(finalist.name, 3, finalist.method, finalist.match, native)} | starts
    budget_flops = config.polish_budget * finetune_flops_estimate(recipient, setup.fitting, answers)
    floor = float(search.rows[0]["criterion"])  # the unedited recipient (REFERENCE): what a polish must beat
    plan = PolishPlan(budget_flops, search.score_cost(), config.polish_steps, config.polish_lrs, config.polish_round,
                      config.polish_patience, floor)

    passes = ForcedPasses(recipient, setup.fitting, setup.batch_size)  # shared: the prefix states are run once

    def trainer(start: Adapter, lr: float) -> Distillation:
        return Distillation(recipient, start, setup.fitting, answers, changed, config.polish_batch, lr, config.seed,
                            passes=passes)

    def score(start: str, name: str, polished: Adapter, extra: dict) -> dict:
        begin = starts[start]
        return search.score(Candidate(name, 3, begin.method, begin.match, polished, None,
                                      Cost(extra["fit_flops"], extra["fit_s"]), extra["polish_steps"],
                                      polish_lr=extra["polish_lr"], polish_budget_flops=budget_flops))

    # where each start begins: the paste's own row, the unedited recipient's (REFERENCE) for the fresh adapter
    origins = {"scratch": search.rows[0]} | ({finalist.name: search.row(finalist)} if finalist is not None else {})
    origins = origins if config.lr_fallback else None
    outcome = race({name: c.edit for name, c in starts.items()}, trainer, score, plan, origins)
    if finalist is None and not outcome.rounds:
        raise ValueError(f"start='scratch' learns everything in the polish, and polish_budget={config.polish_budget!r} "
                         f"pays for no training round ({budget_flops:.3g} FLOPs); raise polish_budget")
    search.flops += outcome.train_flops  # the scoring is counted by the search itself


def polishable(adapter: Adapter) -> bool:
    """Whether :func:`transfer` can polish a paste of ``adapter``: it acts at the last prompt token only (where the
    criterion and the distillation act) and every intervention has a linear form (so it compiles)."""
    return adapter.positions == "last" and all(has_linear_form(iv) for iv in adapter.interventions.values())


def _rank(adapter: Adapter) -> int:
    """The adapter's rank (its largest intervention's), the fresh adapter's rank in the distillation baseline."""
    return max(int(iv.rank) for iv in adapter.interventions.values())
