"""Stage 6 (pipeline): consumes a donor and a recipient model, the donor's :class:`Adapter` and unlabeled prompts of
its task, produces a :class:`Transfer`: a paste chosen without behavior labels, with everything it considered.

``transfer`` prepares the search with :func:`~commandv_interp.pipeline.search.prepare` (a fitting and a held-out
scoring split, the donor's answers with and without its adapter on the scoring prompts, both models profiled on the
fitting prompts and on the same prompts followed by the donor's first response word) and fits a fixed set of
candidates: adapter-aware ``interface`` converters by relative depth and by similarity, ridge and Procrustes
converters by relative depth, chained interface converters at α = ½ (re-recorded on the plain fitting prompts: each
chained fit runs both models again, so it uses the smaller set), and the paper-exact pinv (plain prompts, relative
depth). Stage 1 scores, with the donor-agreement criterion of :mod:`~commandv_interp.pipeline.agreement` on the
first half of the scoring prompts, each fit at α = 1 and at its norm-matched α (a chained fit at its own α), and
each non-chained, non-pinv fit restricted to each of the adapter's layers alone and to all but one, at α = 1 (a
layer whose pasted delta garbles the recipient's answers is left out). Stage 2 scores the three best on all the
scoring prompts, as they are and rescaled by ½ and 2 (a chained fit is refitted at the new α). The best candidate
scored on all prompts is kept (ties: the higher lift, then the smaller α). Forward passes only.

``candidates`` reports every candidate's criterion and the FLOPs of its own fit and of its scoring, so that a user
can see what the choice rested on. The layer-subset candidates were added after a failing zoo cell was diagnosed;
the second zoo world was run once, after every default was fixed (``docs/transfer.md``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from commandv_interp.access import ModelAccess, forward_flops, open_model
from commandv_interp.adapters import Adapter, load_adapter, save_adapter
from commandv_interp.adapters.layer_subsets import proper_subsets
from commandv_interp.converters import Converters, fit_chained_converters, fit_converters, norm_matched_alpha
from commandv_interp.converters.transport import pasted_deltas
from commandv_interp.correspondence import LayerMap
from commandv_interp.io import atomic_write, read_json, write_json
from commandv_interp.paste import compile_paste, paste
from commandv_interp.pipeline.search import MIN_PROMPTS, CandidateSearch, check_transfer_prompts, prepare
from commandv_interp.types import PositionRule
from commandv_interp.version import __version__

__all__ = ["Transfer", "transfer", "load_transfer", "check_transfer_prompts", "MIN_PROMPTS", "PAPER_EXACT",
           "CHAIN_ALPHAS", "REFINE_FACTORS", "REFINE_TOP"]

PAPER_EXACT = "pinv/depth"
"""The paper's configuration: pinv converters, relative depth, α = 1 (always among the candidates)."""
CHAIN_ALPHAS = (0.5,)  # the scale a chained fit is fitted (and pasted) under in stage 1 (stage 2 refits it at ¼ and 1)
REFINE_TOP = 3  # stage 2 rescales the best stage-1 candidates ...
REFINE_FACTORS = (0.5, 2.0)  # ... by these factors (a chained one is refitted at its new scale)
PROFILE_FITS = (("interface", "depth"), ("interface", "similarity"), ("ridge", "depth"), ("procrustes", "depth"),
                ("pinv", "depth"))
KIND = "commandv.transfer"


@dataclass
class Transfer:
    """A paste chosen by :func:`transfer`: the donor's adapter, converters, α and positions for one recipient.

    Attributes:
        adapter, converters, alpha, positions: what :meth:`paste` pastes (``adapter`` is the donor's adapter, or
            the subset of its layers the chosen candidate pastes).
        choice: the chosen candidate's name (``<method>/<match>``, ``<method>/<match>/layers=<l>+<l>`` for a
            subset of the adapter's layers, or ``interface-chained/depth/<α>``).
        candidates: one row per scoring of a candidate × α: ``candidate, alpha, method, match, layers, fit_flops,
            fit_s, alpha_rule, stage, paper_exact, criterion, agree_changed, agree_unchanged, lift, lift_changed,
            lift_unchanged, n_scoring, n_changed, score_flops, score_s`` (the first row is the recipient without a
            paste, for reference; stage 1 rows are scored on half of the scoring prompts, stage 2 rows on all).
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
    pasted: dict[str, Adapter] = field(default_factory=dict, repr=False)  # the adapter each candidate pastes

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
    setup = prepare(donor_model, recipient_model, adapter, prompts, scoring_fraction, max_new_tokens, batch_size,
                    seed)
    recipient, positions = setup.recipient, adapter.positions
    search = CandidateSearch(setup)
    fits: dict[str, Converters] = {}
    pasted: dict[str, Adapter] = {}  # the adapter each candidate pastes (a subset of its layers for some)
    info: dict[str, dict] = {}
    half = math.ceil(search.n_scoring / 2)
    plain_donor, plain_recipient = setup.plain_profiles()  # the paper's pinv and the chained fits use these
    search.score("recipient (no paste)", 0.0, None, method="none", match="none", alpha_rule="none", stage=0,
                 fit_flops=0.0, fit_s=0.0, paper_exact=False)

    def add(name: str, conv: Converters, method: str, match: str, fit_flops: float, fit_s: float,
            layers: tuple[int, ...] = tuple(adapter.layers)) -> None:
        fits[name], pasted[name] = conv, adapter if layers == tuple(adapter.layers) else adapter.restricted(layers)
        info[name] = {"method": method, "match": match, "layers": "+".join(map(str, layers)), "fit_flops": fit_flops,
                      "fit_s": fit_s}

    def scored(name: str, alpha: float, rule: str, stage: int, n: int | None) -> dict:
        conv, used = fits[name], pasted[name]
        return search.score(name, alpha, lambda: pasted_deltas(recipient, used, conv), n, **info[name],
                            alpha_rule=rule, stage=stage, paper_exact=name == PAPER_EXACT and rule == "1")

    def chained(alpha: float) -> str:
        name = f"interface-chained/depth/{alpha:g}"
        if name not in fits:
            t0 = time.perf_counter()
            conv = fit_chained_converters(setup.donor, recipient, adapter, setup.fitting, setup.layer_maps["depth"],
                                          alpha, plain_donor, plain_recipient, positions, batch_size)
            fit_flops = _chain_flops(setup.donor, recipient, setup.fitting, adapter, setup.layer_maps["depth"])
            search.flops += fit_flops
            add(name, conv, "interface-chained", "depth", fit_flops, time.perf_counter() - t0)
        return name

    jobs = [(f"{m}/{match}", m, match) for m, match in PROFILE_FITS]
    for name, method, match in tqdm(jobs, desc="transfer: stage 1", disable=not progress):
        t0 = time.perf_counter()
        if method == "pinv":
            conv = fit_converters(plain_donor, plain_recipient, setup.layer_maps[match], "pinv")
        else:
            conv = fit_converters(setup.donor_profile, setup.recipient_profile, setup.layer_maps[match], method,
                                  adapter)
        add(name, conv, method, match, 0.0, time.perf_counter() - t0)
        for alpha, rule in [(1.0, "1")] + _norm_alpha(adapter, conv, setup.donor_profile, setup.recipient_profile):
            scored(name, alpha, rule, 1, half)
        if method == "pinv":
            continue
        for layers in proper_subsets(adapter.layers):  # a layer whose pasted delta hurts is left out
            sub = f"{name}/layers={'+'.join(map(str, layers))}"
            add(sub, conv.restricted(adapter, layers), method, match, 0.0, 0.0, layers)
            scored(sub, 1.0, "1", 1, half)
    for alpha in CHAIN_ALPHAS:
        scored(chained(alpha), alpha, "chain", 1, half)

    table = search.table()
    top = (table[(table.stage == 1) & ~table.paper_exact.astype(bool)]
           .sort_values(["criterion", "lift"], ascending=False, kind="stable").head(REFINE_TOP))
    for row in tqdm(list(top.itertuples()), desc="transfer: stage 2", disable=not progress):
        scored(row.candidate, row.alpha, row.alpha_rule, 2, None)
        for factor in REFINE_FACTORS:
            alpha = row.alpha * factor
            if row.method == "interface-chained":
                scored(chained(alpha), alpha, "chain", 2, None)
            else:
                scored(row.candidate, alpha, f"{row.alpha_rule}×{factor:g}", 2, None)
    best = search.best()
    return Transfer(pasted[best.candidate], fits[best.candidate], float(best.alpha), positions, str(best.candidate),
                    search.table(), search.flops, time.perf_counter() - start, recipient, dict(fits), dict(pasted))


def _norm_alpha(adapter: Adapter, conv: Converters, p_donor, p_recipient) -> list[tuple[float, str]]:
    """The norm-matched α (none when the paste is zero on every profile prompt, or it is 1 already)."""
    try:
        norm = norm_matched_alpha(adapter, conv, p_donor, p_recipient)
    except ValueError:
        return []
    return [(norm, "norm")] if math.isfinite(norm) and norm > 0 and not math.isclose(norm, 1.0) else []


def _chain_flops(donor: ModelAccess, recipient: ModelAccess, prompts: Sequence[str], adapter: Adapter,
                 layer_map: LayerMap) -> float:
    """The chained fit's own passes beyond the profiles: the donor under its adapter up to its highest layer, the
    recipient up to each mapped recipient layer but the lowest (which the recipient profile supplies)."""
    targets = sorted(set(layer_map.restrict(adapter.layers).as_dict().values()))[1:]
    return (forward_flops(donor, prompts, max(adapter.layers))
            + sum(forward_flops(recipient, prompts, r) for r in targets))

