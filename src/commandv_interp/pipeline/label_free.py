"""Stage 6 (pipeline): consumes a donor and a recipient model, the donor's :class:`Adapter` and unlabeled prompts of
its task, produces a :class:`Transfer`: a paste chosen without behavior labels, with everything it considered.

``transfer`` splits the prompts into a fitting set and a held-out scoring set. It profiles both models on the
fitting prompts and on the same prompts followed by the donor's first response word with and without its adapter
(:func:`~commandv_interp.pipeline.agreement.onset_prompts`), and fits a fixed set of candidates: adapter-aware
``interface`` converters by relative depth and by similarity, ridge and Procrustes converters by relative depth,
chained interface converters at α = ½ and 1, and the paper-exact pinv (plain prompts, relative depth). Stage 1 scores
each fit at α = 1 and at its norm-matched α (a chained fit at its own α) with the donor-agreement criterion of
:mod:`~commandv_interp.pipeline.agreement` on the scoring prompts; stage 2 rescales the three best by ½ and 2 (a
chained fit is refitted at the new α). The best candidate overall is kept (ties: the higher preference, then the smaller α). Forward
passes only.

Defaults were fixed before any transfer outcome was looked at; ``candidates`` reports every candidate's criterion,
the FLOPs of its own fit and of its scoring, so that a user can see what the choice rested on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from commandv_interp.access import ModelAccess, forward_flops, open_model
from commandv_interp.adapters import Adapter, load_adapter, save_adapter
from commandv_interp.converters import Converters, fit_chained_converters, fit_converters, norm_matched_alpha
from commandv_interp.converters.transport import pasted_deltas
from commandv_interp.correspondence import LayerMap, match_layers
from commandv_interp.io import atomic_write, read_json, write_json
from commandv_interp.paste import compile_paste, paste
from commandv_interp.pipeline.agreement import (DonorTargets, ResponseScores, donor_targets, onset_prompts,
                                                score_responses, summarize)
from commandv_interp.profiles import profile
from commandv_interp.types import PositionRule
from commandv_interp.version import __version__

__all__ = ["Transfer", "transfer", "load_transfer", "check_transfer_prompts", "MIN_PROMPTS", "PAPER_EXACT", "CHAIN_ALPHAS", "REFINE_FACTORS", "REFINE_TOP"]

PAPER_EXACT = "pinv/depth"
"""The paper's configuration: pinv converters, relative depth, α = 1 (always among the candidates)."""
CHAIN_ALPHAS = (0.5, 1.0)  # scales a chained fit is fitted (and pasted) under in stage 1
REFINE_TOP = 3  # stage 2 rescales the best stage-1 candidates ...
REFINE_FACTORS = (0.5, 2.0)  # ... by these factors (a chained one is refitted at its new scale)
PROFILE_FITS = (("interface", "depth"), ("interface", "similarity"), ("ridge", "depth"), ("procrustes", "depth"),
                ("pinv", "depth"))
KIND = "commandv.transfer"
MIN_PROMPTS = 16  # a quarter held out for scoring leaves at least 12 to fit on


@dataclass
class Transfer:
    """A paste chosen by :func:`transfer`: the donor's adapter, converters, α and positions for one recipient.

    Attributes:
        adapter, converters, alpha, positions: what :meth:`paste` pastes.
        choice: the chosen candidate's name (``<method>/<match>`` or ``interface-chained/depth``).
        candidates: one row per candidate × α: ``candidate, method, match, alpha, alpha_rule, criterion,
            preference, agree_changed, agree_unchanged, pref_changed, pref_unchanged, n_scoring, n_changed, fit_flops, score_flops, fit_s, score_s, paper_exact,
            stage`` (the first row is the recipient without a paste, for reference).
        flops, wall_s: the whole call (targets, profiles, fits and scoring).
    """

    adapter: Adapter
    converters: Converters
    alpha: float
    positions: PositionRule
    choice: str
    candidates: pd.DataFrame
    flops: float = 0.0
    wall_s: float = 0.0
    recipient: ModelAccess | None = field(default=None, repr=False)
    fits: dict[str, Converters] = field(default_factory=dict, repr=False)  # every candidate's converters (not saved)

    @property
    def layer_map(self) -> dict[int, int]:
        return self.converters.layer_map()

    def paste(self, recipient: ModelAccess | None = None):
        """The chosen paste as a context manager (``cv.paste(recipient, adapter, converters, positions, alpha)``)."""
        target = recipient if recipient is not None else self.recipient
        if target is None:
            raise ValueError("this Transfer was loaded from disk and holds no recipient: pass paste(recipient)")
        return paste(target, self.adapter, self.converters, self.positions, self.alpha)

    def compile(self) -> Adapter:
        """The chosen paste as a native recipient adapter (:func:`~commandv_interp.paste.compile_paste`)."""
        return compile_paste(self.adapter, self.converters, self.positions, self.alpha)

    def save(self, folder: str | Path) -> Path:
        """Write ``transfer.json``, ``converters.safetensors``, ``adapter/`` (pyreft folder) and ``candidates.csv``."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{str(folder)!r} exists and is not a folder; choose a folder for the transfer")
        folder.mkdir(parents=True, exist_ok=True)
        self.converters.save(folder / "converters.safetensors")
        save_adapter(self.adapter, folder / "adapter")
        atomic_write(folder / "candidates.csv", lambda p: self.candidates.to_csv(p, index=False))
        meta = {"kind": KIND, "alpha": self.alpha, "positions": self.positions, "choice": self.choice,
                "adapter_digest": self.adapter.digest(), "donor_model": self.converters.donor_model,
                "recipient_model": self.converters.recipient_model, "flops": self.flops, "wall_s": self.wall_s,
                "library_version": __version__}
        write_json(folder / "transfer.json", meta)
        return folder


def load_transfer(folder: str | Path, recipient: ModelAccess | None = None) -> Transfer:
    """Read a folder written by :meth:`Transfer.save`; refuses a folder whose adapter is not the one its converters
    were chosen for."""
    folder = Path(folder)
    meta = read_json(folder / "transfer.json")
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise ValueError(f"{str(folder)!r} is not a commandv transfer folder (transfer.json kind "
                         f"{meta.get('kind') if isinstance(meta, dict) else meta!r})")
    adapter = load_adapter(folder / "adapter")
    if adapter.digest() != meta["adapter_digest"]:
        raise ValueError(f"the adapter in {str(folder / 'adapter')!r} is not the one this transfer was made for "
                         f"(digest {adapter.digest()!r}, expected {meta['adapter_digest']!r})")
    converters = Converters.load(folder / "converters.safetensors")
    if recipient is not None:
        converters.check_recipient(open_model(recipient))
    candidates = pd.read_csv(folder / "candidates.csv")
    return Transfer(adapter, converters, float(meta["alpha"]), meta["positions"], meta["choice"], candidates,
                    float(meta["flops"]), float(meta["wall_s"]), open_model(recipient) if recipient else None)


def transfer(
    donor_model: ModelAccess,
    recipient_model: ModelAccess,
    adapter: Adapter,
    prompts: Sequence[str],
    scoring_fraction: float = 0.25,
    max_new_tokens: int = 8,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> Transfer:
    """Derive a working paste of ``adapter`` into the recipient without behavior labels (see the module doc).

    Args:
        donor_model, recipient_model: the two models (``ModelAccess`` or anything ``open_model`` accepts).
        adapter: the donor's ReFT adapter (linear-source kinds for the adapter-aware candidates).
        prompts: unlabeled prompts of the adapter's task (e.g. its training inputs), at least 16.
        scoring_fraction: share of the prompts held out from fitting and used to score the candidates.
        max_new_tokens: response tokens the donor generates for the targets (what the criterion compares).
        batch_size: prompts per forward pass.
        seed: the fit/scoring split.
        progress: show a progress bar over the candidates.

    Returns:
        A :class:`Transfer` with the chosen paste and the tidy ``candidates`` table.

    Example:
        >>> t = transfer(donor, recipient, adapter, prompts)  # doctest: +SKIP
        >>> with t.paste():  # doctest: +SKIP
        ...     recipient.generate(recipient.encode(new_prompts))
    """
    start = time.perf_counter()
    donor, recipient = open_model(donor_model), open_model(recipient_model)
    prompts = check_transfer_prompts(prompts)
    if not 0 < scoring_fraction < 1:
        raise ValueError(f"scoring_fraction must be in (0, 1), got {scoring_fraction!r}")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    n_score = max(4, round(len(prompts) * scoring_fraction))
    scoring = [prompts[i] for i in order[:n_score]]
    fitting = [prompts[i] for i in order[n_score:]]
    positions = adapter.positions
    search = _Search(donor, recipient, adapter, positions, batch_size)

    search.targets = donor_targets(donor, adapter, scoring, max_new_tokens, batch_size)
    search.flops += 2 * _generation_flops(donor, scoring, max_new_tokens)
    search.score("recipient (no paste)", "none", "none", None, [(0.0, "none")], stage=0)

    augmented = fitting + onset_prompts(donor, adapter, fitting, batch_size)
    search.flops += 2 * forward_flops(donor, fitting)
    p_donor = profile(donor, augmented, layers=adapter.layers, batch_size=batch_size, progress=False)
    p_recipient = profile(recipient, augmented, batch_size=batch_size, progress=False)
    search.flops += (forward_flops(donor, augmented, max(adapter.layers))
                     + forward_flops(recipient, augmented, recipient.n_layers - 1))
    maps = {"depth": match_layers(p_donor, p_recipient, "depth", adapter.layers),
            "similarity": match_layers(p_donor, p_recipient, "similarity", adapter.layers)}
    plain_rows = list(range(len(fitting)))  # the paper's pinv is fitted on the plain prompts alone
    paper_donor, paper_recipient = p_donor.subset(plain_rows), p_recipient.subset(plain_rows)
    fits: list[tuple[str, str, str, object]] = [
        (f"{m}/{match}", m, match, lambda m=m, match=match: fit_converters(p_donor, p_recipient, maps[match], m,
                                                                            adapter))
        for m, match in PROFILE_FITS if m != "pinv"]
    fits.append((PAPER_EXACT, "pinv", "depth",
                 lambda: fit_converters(paper_donor, paper_recipient, maps["depth"], "pinv")))
    for name, method, match, make in tqdm(fits, desc="transfer: stage 1", disable=not progress):
        t0 = time.perf_counter()
        conv = make()
        search.fits[name] = conv
        grid = [(1.0, "1")] + _norm_alpha(adapter, conv, p_donor, p_recipient)
        search.score(name, method, match, conv, grid, stage=1, fit_s=time.perf_counter() - t0)
    for alpha_chain in CHAIN_ALPHAS:
        search.chained(augmented, maps["depth"], p_donor, p_recipient, alpha_chain, stage=1)

    table = search.table()
    top = (table[(table.stage == 1) & ~table.paper_exact]
           .sort_values(["criterion", "preference"], ascending=False, kind="stable").head(REFINE_TOP))
    for row in tqdm(list(top.itertuples()), desc="transfer: stage 2", disable=not progress):
        for factor in REFINE_FACTORS:
            alpha = row.alpha * factor
            if row.method == "interface-chained":
                search.chained(augmented, maps["depth"], p_donor, p_recipient, alpha, stage=2)
            else:
                search.score(row.candidate, row.method, row.match, search.fits[row.candidate],
                             [(alpha, f"{row.alpha_rule}×{factor:g}")], stage=2)
    table = search.table()
    pasted = table[table.method != "none"]
    best = pasted.sort_values(["criterion", "preference", "alpha"], ascending=[False, False, True],
                              kind="stable").iloc[0]
    return Transfer(adapter, search.fits[best.candidate], float(best.alpha), positions, str(best.candidate), table,
                    search.flops, time.perf_counter() - start, recipient, dict(search.fits))


class _Search:
    """The candidates scored so far, their fits, and the FLOPs spent."""

    def __init__(self, donor: ModelAccess, recipient: ModelAccess, adapter: Adapter, positions: PositionRule,
                 batch_size: int) -> None:
        self.donor, self.recipient, self.adapter = donor, recipient, adapter
        self.positions, self.batch_size = positions, batch_size
        self.targets: DonorTargets | None = None
        self.fits: dict[str, Converters] = {}
        self.rows: list[dict] = []
        self.flops = 0.0
        self._score_flops: float | None = None

    def score(self, name: str, method: str, match: str, conv: Converters | None, alphas: list[tuple[float, str]],
              stage: int, fit_flops: float = 0.0, fit_s: float = 0.0) -> None:
        targets = self.targets
        if self._score_flops is None:
            self._score_flops = _scoring_flops(self.recipient, targets)
        per_layer = pasted_deltas(self.recipient, self.adapter, conv) if conv is not None else None
        for alpha, rule in alphas:
            t1 = time.perf_counter()
            scores = score_responses(self.recipient, targets, per_layer, alpha, self.batch_size)
            self.flops += self._score_flops
            self.rows.append(_row(name, method, match, alpha, rule, scores, targets, fit_flops, self._score_flops,
                                  fit_s, time.perf_counter() - t1) | {"stage": stage})

    def chained(self, prompts: list[str], layer_map: LayerMap, p_donor, p_recipient, alpha: float, stage: int) -> None:
        name = f"interface-chained/depth/{alpha:g}"
        if name in self.fits:
            return
        t0 = time.perf_counter()
        conv = fit_chained_converters(self.donor, self.recipient, self.adapter, prompts, layer_map, alpha, p_donor,
                                      p_recipient, self.positions, self.batch_size)
        fit_flops = _chain_flops(self.donor, self.recipient, prompts, self.adapter, layer_map)
        self.flops += fit_flops
        self.fits[name] = conv
        self.score(name, "interface-chained", "depth", conv, [(alpha, "chain")], stage, fit_flops,
                   time.perf_counter() - t0)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def check_transfer_prompts(prompts: Sequence[str]) -> list[str]:
    """The distinct prompts, in order; refuses fewer than ``MIN_PROMPTS`` (a fitting and a scoring set are needed)."""
    distinct = list(dict.fromkeys(prompts))
    if len(distinct) < MIN_PROMPTS:
        raise ValueError(f"transfer needs at least {MIN_PROMPTS} distinct prompts of the adapter's task, got "
                         f"{len(distinct)}; pass more (e.g. the adapter's training inputs)")
    return distinct


def _norm_alpha(adapter: Adapter, conv: Converters, p_donor, p_recipient) -> list[tuple[float, str]]:
    """The norm-matched α (none when the paste is zero on every profile prompt, or it is 1 already)."""
    try:
        norm = norm_matched_alpha(adapter, conv, p_donor, p_recipient)
    except ValueError:
        return []
    return [(norm, "norm")] if math.isfinite(norm) and norm > 0 and not math.isclose(norm, 1.0) else []


def _row(name: str, method: str, match: str, alpha: float, rule: str, scores: ResponseScores,
         targets: DonorTargets, fit_flops: float, score_flops: float, fit_s: float, score_s: float = 0.0) -> dict:
    return {"candidate": name, "method": method, "match": match, "alpha": alpha, "alpha_rule": rule,
            **summarize(scores, targets.changed),
            "n_scoring": len(targets.prompts), "n_changed": targets.n_changed,
            "fit_flops": fit_flops, "score_flops": score_flops, "fit_s": fit_s, "score_s": score_s,
            "paper_exact": name == PAPER_EXACT and rule == "1"}


def _generation_flops(access: ModelAccess, prompts: Sequence[str], new_tokens: int) -> float:
    """A greedy generation with a KV cache: the prompt pass plus one token per new token and prompt."""
    params_pass = forward_flops(access, prompts)
    tokens = sum(len(ids) for ids in access.tokenizer(list(prompts))["input_ids"])
    return params_pass * (1 + new_tokens * len(prompts) / max(tokens, 1))


def _scoring_flops(recipient: ModelAccess, targets: DonorTargets) -> float:
    texts = [p + " " + r for p, r in zip(targets.prompts, targets.target)]
    texts += [p + " " + r for p, r in zip(targets.prompts, targets.foil)]
    return forward_flops(recipient, texts)


def _chain_flops(donor: ModelAccess, recipient: ModelAccess, prompts: Sequence[str], adapter: Adapter,
                 layer_map: LayerMap) -> float:
    """The chained fit's own passes beyond the profiles: the donor under its adapter up to its highest layer, the
    recipient up to each mapped recipient layer but the lowest (which the recipient profile supplies)."""
    targets = sorted(set(layer_map.restrict(adapter.layers).as_dict().values()))[1:]
    return (forward_flops(donor, prompts, max(adapter.layers))
            + sum(forward_flops(recipient, prompts, r) for r in targets))

