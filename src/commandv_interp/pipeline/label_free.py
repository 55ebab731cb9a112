"""Stage 6 (pipeline): consumes a donor and a recipient model, the donor's :class:`Adapter` and unlabeled prompts of
its task, produces a :class:`Transfer`: a paste chosen without behavior labels, with everything it considered.

``transfer`` prepares the search with :func:`~commandv_interp.pipeline.search.prepare` (a fitting and a held-out
scoring split, the donor's answers with and without its adapter on the scoring prompts, both models profiled on the
fitting prompts and on the same prompts followed by the donor's first response word) and then:

1. scores, with the donor-agreement criterion of :mod:`~commandv_interp.pipeline.agreement` on the first half of the
   scoring prompts, adapter-aware ``interface`` converters by relative depth and by similarity and ridge and
   Procrustes converters by relative depth, at α = 1 (the polish learns the scale), and the paper-exact pinv (plain
   prompts, relative depth, α = 1) as a named row; then the best of them restricted to each of the adapter's layers
   alone and to all but one (a layer whose pasted delta garbles the recipient's answers is left out);
2. scores the best stage-1 paste on all the scoring prompts;
3. *polishes* it (:mod:`~commandv_interp.pipeline.polish`): the paste compiled to a native recipient adapter is
   trained, in rounds of a few steps, to reproduce the donor+adapter's answers on the fitting prompts (distillation
   from the donor itself: no labels), each round scored on all the scoring prompts (skipped when the paste already
   reproduces every scoring answer; stopped early when a round does). The first round also trains a fresh adapter
   at the depth-matched layers, and the start that scores higher goes on.

The best candidate scored on all the scoring prompts is kept (ties: the higher lift, then the earlier). Forward
passes only, except the polish's few training steps, whose FLOPs are counted as a finetune's are.

``candidates`` reports every candidate's criterion and the FLOPs of its own fit and of its scoring, so that a user
can see what the choice rested on. ``start="scratch"`` skips the paste and polishes a fresh adapter: the
distillation baseline that shows what the paste contributes.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

import torch

from commandv_interp.access import ModelAccess, open_model
from commandv_interp.adapters import Adapter, load_adapter, save_adapter
from commandv_interp.adapters.edit import Edit
from commandv_interp.adapters.edits import placed
from commandv_interp.adapters.layer_subsets import proper_subsets
from commandv_interp.adapters.linear_form import has_linear_form
from commandv_interp.adapters.surrogate import pasteable
from commandv_interp.converters import Converters, fit_converters
from commandv_interp.converters.transport import pasted_deltas
from commandv_interp.io import atomic_write, read_json, write_json
from commandv_interp.paste import apply_adapter, compile_paste, paste
from commandv_interp.pipeline.polish import (POLISH_BUDGET, POLISH_STEPS, Distillation, finetune_flops_estimate,
                                             fresh_adapter)
from commandv_interp.pipeline.polish_race import PolishPlan, race
from commandv_interp.pipeline.search import MIN_PROMPTS, CandidateSearch, check_transfer_prompts, prepare
from commandv_interp.pipeline.to_peft import LORA_STEPS, LoraDistillation, to_peft
from commandv_interp.types import PositionRule, check_choice
from commandv_interp.version import __version__

__all__ = ["Transfer", "transfer", "load_transfer", "check_transfer_prompts", "polishable", "native_deltas",
           "MIN_PROMPTS", "PAPER_EXACT", "STARTS"]

PAPER_EXACT = "pinv/depth"
"""The paper's configuration: pinv converters, relative depth, α = 1 (always among the candidates)."""
STARTS = ("paste", "scratch")
PROFILE_FITS = (("interface", "depth"), ("interface", "similarity"), ("ridge", "depth"), ("procrustes", "depth"),
                ("pinv", "depth"))
KIND = "commandv.transfer"


@dataclass
class Transfer:
    """A paste chosen by :func:`transfer`: the donor's adapter, converters, α and positions for one recipient, and
    the native recipient adapter the polish made of it.

    Attributes:
        adapter, converters, alpha, positions: the chosen paste (``adapter`` is the donor's adapter, or the subset
            of its layers the chosen candidate pastes; ``converters`` is None for ``start="scratch"``).
        choice: the chosen candidate's name (``<method>/<match>``, ``<method>/<match>/layers=<l>+<l>`` for a
            subset of the adapter's layers, ``<paste>+polish/<steps>`` for a polished one, ``scratch+polish/<steps>``
            for the distillation baseline).
        polished: the chosen native recipient adapter when the choice is polished (what :meth:`paste` applies and
            :meth:`compile` returns), else None.
        candidates: one row per scoring of a candidate × α: ``candidate, alpha, method, match, layers, fit_flops,
            fit_s, polish_steps, alpha_rule, stage, paper_exact, criterion, agree_changed, agree_unchanged, lift,
            lift_changed, lift_unchanged, n_scoring, n_changed, score_flops, score_s`` (the first row is the
            recipient without a paste, for reference; stage 1 rows are scored on half of the scoring prompts, stages
            2 and 3 on all; a polished row's ``fit_flops`` is its round of training).
        flops, wall_s: the whole call (targets, profiles, fits, scoring and polish).
    """

    adapter: Adapter
    converters: Converters | None
    alpha: float
    positions: PositionRule
    choice: str
    candidates: pd.DataFrame
    flops: float = 0.0
    wall_s: float = 0.0
    recipient: ModelAccess | None = field(default=None, repr=False)
    fits: dict[str, Converters] = field(default_factory=dict, repr=False)  # every candidate's converters (not saved)
    pasted: dict[str, Adapter] = field(default_factory=dict, repr=False)  # the adapter each candidate pastes
    polished: Adapter | None = field(default=None, repr=False)
    rounds: dict[str, Adapter] = field(default_factory=dict, repr=False)  # every polish round's adapter (not saved)

    @property
    def layer_map(self) -> dict[int, int]:
        """Donor layer → recipient layer of the paste (``{}`` for the distillation baseline, which has none)."""
        return self.converters.layer_map() if self.converters is not None else {}

    def paste(self, recipient: ModelAccess | None = None):
        """The chosen edit as a context manager: the polished native adapter, or
        ``cv.paste(recipient, adapter, converters, positions, alpha)``."""
        target = recipient if recipient is not None else self.recipient
        if target is None:
            raise ValueError("this Transfer was loaded from disk and holds no recipient: pass paste(recipient)")
        if self.polished is not None:
            return apply_adapter(open_model(target), self.polished)
        return paste(target, self.adapter, self.converters, self.positions, self.alpha)

    def compile(self) -> Adapter:
        """The chosen edit as a native recipient adapter: the polished one, or
        :func:`~commandv_interp.paste.compile_paste` of the paste."""
        if self.polished is not None:
            return self.polished
        return compile_paste(self.adapter, self.converters, self.positions, self.alpha)

    def to_peft(self, folder: str | Path, donor_model: ModelAccess, prompts: Sequence[str], rank: int = 8,
                steps: int = LORA_STEPS, seed: int = 0, max_new_tokens: int = 8,
                progress: bool = True) -> LoraDistillation:
        """The transfer as a recipient LoRA in PEFT's format, distilled from the donor+edit's answers to ``prompts``
        (``max_new_tokens`` long) over the whole answer (:func:`~commandv_interp.pipeline.to_peft.to_peft`; the
        teacher is the donor's edit)."""
        if self.recipient is None:
            raise ValueError("this Transfer was loaded from disk and holds no recipient: load_transfer(folder, recipient)")
        return to_peft(donor_model, self.recipient, self.adapter, prompts, folder, rank, steps, seed, max_new_tokens,
                       progress)

    def save(self, folder: str | Path) -> Path:
        """Write ``transfer.json``, ``converters.safetensors``, ``adapter/`` (pyreft folder), ``polished/`` (when
        the choice is polished) and ``candidates.csv``."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{str(folder)!r} exists and is not a folder; choose a folder for the transfer")
        folder.mkdir(parents=True, exist_ok=True)
        if self.converters is not None:
            self.converters.save(folder / "converters.safetensors")
        save_adapter(self.adapter, folder / "adapter")
        if self.polished is not None:
            save_adapter(self.polished, folder / "polished")
        atomic_write(folder / "candidates.csv", lambda p: self.candidates.to_csv(p, index=False))
        donor, recipient = _models(self)
        meta = {"kind": KIND, "alpha": self.alpha, "positions": self.positions, "choice": self.choice,
                "adapter_digest": self.adapter.digest(), "donor_model": donor, "recipient_model": recipient,
                "converters": self.converters is not None,
                "polished_digest": self.polished.digest() if self.polished is not None else None,
                "flops": self.flops, "wall_s": self.wall_s, "library_version": __version__}
        write_json(folder / "transfer.json", meta)
        return folder


def _models(t: Transfer) -> tuple[str | None, str | None]:
    if t.converters is not None:
        return t.converters.donor_model, t.converters.recipient_model
    return t.adapter.metadata.get("model_name"), t.polished.metadata.get("model_name") if t.polished else None


def load_transfer(folder: str | Path, recipient: ModelAccess | None = None) -> Transfer:
    """Read a folder written by :meth:`Transfer.save`; refuses a folder whose adapter (or polished adapter) is not
    the one its converters were chosen for, and converters fitted for another recipient."""
    folder = Path(folder)
    meta = read_json(folder / "transfer.json")
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise ValueError(f"{str(folder)!r} is not a commandv transfer folder (transfer.json kind "
                         f"{meta.get('kind') if isinstance(meta, dict) else meta!r})")
    adapter = load_adapter(folder / "adapter")
    if adapter.digest() != meta["adapter_digest"]:
        raise ValueError(f"the adapter in {str(folder / 'adapter')!r} is not the one this transfer was made for "
                         f"(digest {adapter.digest()!r}, expected {meta['adapter_digest']!r})")
    polished = None
    if meta.get("polished_digest"):
        polished = load_adapter(folder / "polished")
        if polished.digest() != meta["polished_digest"]:
            raise ValueError(f"the adapter in {str(folder / 'polished')!r} is not the one this transfer chose "
                             f"(digest {polished.digest()!r}, expected {meta['polished_digest']!r})")
    converters = Converters.load(folder / "converters.safetensors") if meta.get("converters", True) else None
    access = open_model(recipient) if recipient is not None else None
    if access is not None and converters is not None:
        converters.check_recipient(access)
    if access is not None and polished is not None and polished.d_model != access.d_model:
        raise ValueError(f"the polished adapter in {str(folder)!r} has d_model {polished.d_model}, the recipient "
                         f"{access.name!r} {access.d_model}: load it with the recipient it was made for")
    candidates = pd.read_csv(folder / "candidates.csv")
    return Transfer(adapter, converters, float(meta["alpha"]), meta["positions"], meta["choice"], candidates,
                    float(meta["flops"]), float(meta["wall_s"]), access, polished=polished)


def transfer(
    donor_model: ModelAccess,
    recipient_model: ModelAccess,
    adapter: Edit,
    prompts: Sequence[str],
    scoring_fraction: float = 0.25,
    max_new_tokens: int = 8,
    batch_size: int = 32,
    seed: int = 0,
    polish_steps: int = POLISH_STEPS,
    start: str = "paste",
    polish_budget: float = POLISH_BUDGET,
    progress: bool = True,
) -> Transfer:
    """Derive a working paste of ``adapter`` into the recipient without behavior labels (see the module doc).

    Args:
        donor_model, recipient_model: the two models (``ModelAccess`` or anything ``open_model`` accepts).
        adapter: the donor's ReFT adapter (linear-source kinds for the adapter-aware candidates), or a LoRA or
            steering vector (:func:`~commandv_interp.adapters.edit.load_edit`): its last-token NodiReFT surrogate
            is pasted and the edit itself is the teacher (:func:`~commandv_interp.adapters.surrogate.pasteable`).
        prompts: unlabeled prompts of the adapter's task (e.g. its training inputs), at least 16.
        scoring_fraction: share of the prompts held out from fitting and used to score the candidates.
        max_new_tokens: response tokens the donor generates for the targets (what the criterion compares and the
            polish learns).
        batch_size: prompts per forward pass.
        seed: the fit/scoring split and the polish's batches.
        polish_steps: at most this many distillation steps on the chosen paste (0: the paste as it is, the
            backprop-free Command-V path); the budget and the held-out criterion's patience stop it earlier.
        start: ``"paste"`` (search the candidates, polish the best) or ``"scratch"`` (no paste: polish a fresh
            rank-r adapter at the depth-matched recipient layers; the distillation baseline).
        polish_budget: the polish's FLOPs (its learning-rate sweep, rounds and their scoring) at most, as a share
            of the estimated finetune's (:func:`~commandv_interp.pipeline.polish.finetune_flops_estimate`).
        progress: show a progress bar over the candidates.

    Returns:
        A :class:`Transfer` with the chosen paste and the tidy ``candidates`` table.

    Example:
        >>> t = transfer(donor, recipient, adapter, prompts)  # doctest: +SKIP
        >>> with t.paste():  # doctest: +SKIP
        ...     recipient.generate(recipient.encode(new_prompts))
    """
    check_choice("start", start, STARTS)
    if isinstance(polish_steps, bool) or not isinstance(polish_steps, int) or polish_steps < 0:
        raise ValueError(f"polish_steps must be an int >= 0, got {polish_steps!r}")
    if isinstance(polish_budget, bool) or not isinstance(polish_budget, float | int) or not 0 < polish_budget <= 1:
        raise ValueError(f"polish_budget is a share of the estimated finetune's FLOPs in (0, 1], got "
                         f"{polish_budget!r}")
    adapter = pasteable(donor_model, adapter, prompts)  # a LoRA or steering vector: its surrogate, taught by it
    if start == "scratch" and (polish_steps == 0 or adapter.positions != "last"):
        raise ValueError(f"start='scratch' learns everything in the polish, which acts at the last prompt token: "
                         f"pass polish_steps >= 1 (got {polish_steps}) and a positions='last' adapter "
                         f"(got {adapter.positions!r})")
    began = time.perf_counter()
    setup = prepare(donor_model, recipient_model, adapter, prompts, scoring_fraction, max_new_tokens, batch_size,
                    seed)
    recipient, positions = setup.recipient, adapter.positions
    search = CandidateSearch(setup)
    fits: dict[str, Converters] = {}
    pasted: dict[str, Adapter] = {}  # the adapter each candidate pastes (a subset of its layers for some)
    info: dict[str, dict] = {}
    half = math.ceil(search.n_scoring / 2)
    search.score("recipient (no paste)", 0.0, None, method="none", match="none", alpha_rule="none", stage=0,
                 fit_flops=0.0, fit_s=0.0, paper_exact=False, polish_steps=0)

    def add(name: str, conv: Converters, method: str, match: str, fit_s: float,
            layers: tuple[int, ...] = tuple(adapter.layers)) -> None:
        fits[name], pasted[name] = conv, adapter if layers == tuple(adapter.layers) else adapter.restricted(layers)
        info[name] = {"method": method, "match": match, "layers": "+".join(map(str, layers)), "fit_flops": 0.0,
                      "fit_s": fit_s, "polish_steps": 0}

    def scored(name: str, alpha: float, rule: str, stage: int, n: int | None) -> dict:
        conv, used = fits[name], pasted[name]
        return search.score(name, alpha, lambda: pasted_deltas(recipient, used, conv), n, **info[name],
                            alpha_rule=rule, stage=stage, paper_exact=name == PAPER_EXACT and rule == "1")

    base: pd.Series | None = None
    if start == "paste":
        plain_donor, plain_recipient = setup.plain_profiles()  # the paper's pinv uses these
        for method, match in tqdm(PROFILE_FITS, desc="transfer: stage 1", disable=not progress):
            t0, name = time.perf_counter(), f"{method}/{match}"
            if method == "pinv":
                conv = fit_converters(plain_donor, plain_recipient, setup.layer_maps[match], "pinv")
            else:
                conv = fit_converters(setup.donor_profile, setup.recipient_profile, setup.layer_maps[match], method,
                                      adapter)
            add(name, conv, method, match, time.perf_counter() - t0)
            scored(name, 1.0, "1", 1, half)
        lead = _leader(search, stage=1)
        for layers in proper_subsets(adapter.layers):  # a layer whose pasted delta hurts is left out
            sub = f"{lead.candidate}/layers={'+'.join(map(str, layers))}"
            add(sub, fits[lead.candidate].restricted(adapter, layers), str(lead.method), str(lead.match), 0.0, layers)
            scored(sub, float(lead.alpha), str(lead.alpha_rule), 1, half)
        base = _leader(search, stage=1)
        base = pd.Series(scored(str(base.candidate), float(base.alpha), str(base.alpha_rule), 2, None))
    rounds: dict[str, Adapter] = {}
    if polish_steps:
        rounds = _polish(search, setup, base, fits, pasted, polish_steps, polish_budget, seed, info)
    best = search.best()
    name = str(best.candidate)
    if base is None or name.startswith("scratch+"):  # the distillation baseline (or it won the polish): no paste
        chosen, converters, alpha = adapter, None, 1.0
    else:  # the stage-2 paste, as it is or polished (the only paste scored on all prompts)
        chosen, converters, alpha = pasted[str(base.candidate)], fits[str(base.candidate)], float(base.alpha)
    return Transfer(chosen, converters, alpha, positions, name, search.table(), search.flops,
                    time.perf_counter() - began, recipient, dict(fits), dict(pasted), rounds.get(name), rounds)


def _leader(search: CandidateSearch, stage: int) -> pd.Series:
    """The best scored paste of ``stage`` that is not the paper-exact row (criterion, then lift, then smaller α)."""
    table = search.table()
    table = table[(table.stage == stage) & ~table.paper_exact.astype(bool)]
    return table.sort_values(["criterion", "lift", "alpha"], ascending=[False, False, True], kind="stable").iloc[0]


def _polish(search: CandidateSearch, setup, base: pd.Series | None, fits: dict[str, Converters],
            pasted: dict[str, Adapter], steps: int, budget: float, seed: int, info: dict) -> dict[str, Adapter]:
    """Stage 3: distill the donor+adapter's answers on the fitting prompts into the chosen paste (compiled to a
    native recipient adapter) and, beside it, into a fresh adapter at the depth-matched layers
    (:func:`~commandv_interp.pipeline.polish_race.race`): both starts try the same learning rates in a first round,
    the best held-out trial goes on while the criterion improves, all within ``budget`` × the estimated finetune's
    FLOPs. Every round is scored on all scoring prompts (the best of the paste and the rounds is chosen afterwards)."""
    recipient, adapter = setup.recipient, setup.adapter
    if base is not None and not polishable(adapter):
        warnings.warn(f"the adapter acts at positions={adapter.positions!r} or has a kind without a linear form: "
                      "the paste is kept as it is (polish_steps needs a last-token adapter of a linear kind)",
                      stacklevel=3)
        return {}
    if base is not None and float(base.criterion) >= 1.0:  # the paste reproduces every scoring answer already
        return {}
    answers, changed = list(setup.fitting_answers), list(setup.fitting_changed)
    layers = sorted(set(setup.layer_maps["depth"].restrict(adapter.layers).as_dict().values()))
    starts = {"scratch": (fresh_adapter(recipient, layers, _rank(adapter), seed),
                          {"method": "scratch", "match": "depth", "layers": "+".join(map(str, adapter.layers))})}
    if base is not None:
        lead = str(base.candidate)
        starts = {lead: (compile_paste(pasted[lead], fits[lead], "last", float(base.alpha)), dict(info[lead]))} | starts
    budget_flops = budget * finetune_flops_estimate(recipient, setup.fitting, answers)
    plan = PolishPlan(budget_flops, search.score_cost(), max_steps=steps)

    def trainer(start: Adapter, lr: float) -> Distillation:
        return Distillation(recipient, start, setup.fitting, answers, changed, lr=lr, seed=seed)

    def score(start: str, candidate: str, polished: Adapter, extra: dict) -> dict:
        return search.score(candidate, 1.0, native_deltas(recipient, polished), None,
                            **(starts[start][1] | extra | {"polish_budget_flops": budget_flops}),
                            alpha_rule="polished", stage=3, paper_exact=False)

    outcome = race({name: begin for name, (begin, _) in starts.items()}, trainer, score, plan)
    search.flops += outcome.train_flops  # the scoring is counted by the search itself
    return outcome.rounds


def polishable(adapter: Adapter) -> bool:
    """Whether :func:`transfer` can polish a paste of ``adapter``: it acts at the last prompt token only (where the
    criterion and the distillation act) and every intervention has a linear form (so it compiles)."""
    return adapter.positions == "last" and all(has_linear_form(iv) for iv in adapter.interventions.values())


def native_deltas(recipient: ModelAccess, adapter: Adapter) -> dict[int, list]:
    """Recipient layer → the delta function of a native recipient adapter (placed on that layer's device)."""
    return {layer: [placed(iv, recipient.block_device(layer)).delta] for layer, iv in adapter.interventions.items()}


def _rank(adapter: Adapter) -> int:
    """The adapter's rank (its largest intervention's), the fresh adapter's rank in the distillation baseline."""
    return max(int(iv.rank) for iv in adapter.interventions.values())
