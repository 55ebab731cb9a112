"""Stage 6 (pipeline): consumes a donor and a recipient model, the donor's :class:`Adapter` and unlabeled prompts of
its task, produces a :class:`Transfer`: a paste chosen without behavior labels, with everything it considered.

``transfer`` splits the prompts into a fitting set and a held-out scoring set, fits a fixed set of candidate
converters on the fitting set (adapter-aware ``interface`` converters by relative depth and by similarity, chained
interface converters at three scales, ridge and Procrustes converters, and the paper-exact pinv), scores every
candidate × scale with the donor-agreement criterion of :mod:`~commandv_interp.pipeline.agreement` on the scoring
set, and keeps the best. Forward passes only. The scale grid for profile-based fits is ``{¼, ½, 1, 2}`` times the
norm-matched α plus α = 1; a chained fit is scored at the α it was chained under.

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
from commandv_interp.pipeline.agreement import (DonorTargets, criterion, donor_targets, group_preferences,
                                                response_margins)
from commandv_interp.profiles import profile
from commandv_interp.types import PositionRule
from commandv_interp.version import __version__

__all__ = ["Transfer", "transfer", "load_transfer", "PAPER_EXACT", "CHAIN_ALPHAS", "ALPHA_FACTORS"]

PAPER_EXACT = "pinv/depth"
"""The paper's configuration: pinv converters, relative depth, α = 1 (always among the candidates)."""
CHAIN_ALPHAS = (0.25, 0.5, 1.0)  # scales a chained fit is fitted (and pasted) under
ALPHA_FACTORS = (0.25, 0.5, 1.0, 2.0)  # multiples of the norm-matched α tried for profile-based fits
PROFILE_FITS = (("interface", "depth"), ("interface", "similarity"), ("ridge", "depth"), ("procrustes", "depth"),
                ("pinv", "depth"))
KIND = "commandv.transfer"


@dataclass
class Transfer:
    """A paste chosen by :func:`transfer`: the donor's adapter, converters, α and positions for one recipient.

    Attributes:
        adapter, converters, alpha, positions: what :meth:`paste` pastes.
        choice: the chosen candidate's name (``<method>/<match>`` or ``interface-chained/depth``).
        candidates: one row per candidate × α: ``candidate, method, match, alpha, alpha_rule, criterion,
            pref_changed, pref_unchanged, n_scoring, n_changed, fit_flops, score_flops, fit_s, score_s, paper_exact``
            (the first row is the recipient without a paste, for reference).
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
    prompts = list(dict.fromkeys(prompts))
    if len(prompts) < 16:
        raise ValueError(f"transfer needs at least 16 distinct prompts of the adapter's task, got {len(prompts)}; "
                         "pass more (e.g. the adapter's training inputs)")
    if not 0 < scoring_fraction < 1:
        raise ValueError(f"scoring_fraction must be in (0, 1), got {scoring_fraction!r}")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    n_score = max(4, round(len(prompts) * scoring_fraction))
    scoring = [prompts[i] for i in order[:n_score]]
    fitting = [prompts[i] for i in order[n_score:]]
    positions = adapter.positions

    targets = donor_targets(donor, adapter, scoring, max_new_tokens, batch_size)
    flops = 2 * _generation_flops(donor, scoring, max_new_tokens)
    rows: list[dict] = []
    fits: dict[str, Converters] = {}
    base = response_margins(recipient, targets, None, 1.0, batch_size)
    score_flops = _scoring_flops(recipient, targets)
    rows.append(_row("recipient (no paste)", "none", "none", 0.0, "none", base, targets, 0.0, score_flops, 0.0))
    flops += score_flops

    p_donor = profile(donor, fitting, layers=adapter.layers, batch_size=batch_size)
    p_recipient = profile(recipient, fitting, batch_size=batch_size)
    flops += (forward_flops(donor, fitting, max(adapter.layers))
              + forward_flops(recipient, fitting, recipient.n_layers - 1))
    maps = {"depth": match_layers(p_donor, p_recipient, "depth", adapter.layers),
            "similarity": match_layers(p_donor, p_recipient, "similarity", adapter.layers)}
    plan = [(f"{m}/{match}", m, match) for m, match in PROFILE_FITS] + [
        (f"interface-chained/depth/{a:g}", "interface-chained", "depth") for a in CHAIN_ALPHAS]
    for name, method, match in tqdm(plan, desc="transfer candidates", disable=not progress):
        t0 = time.perf_counter()
        if method == "interface-chained":
            alpha_chain = float(name.rsplit("/", 1)[1])
            conv = fit_chained_converters(donor, recipient, adapter, fitting, maps["depth"], alpha_chain,
                                          p_donor, p_recipient, positions, batch_size)
            fit_flops = _chain_flops(donor, recipient, fitting, adapter, maps["depth"])
            alphas = [(alpha_chain, "chain")]
        else:
            conv = fit_converters(p_donor, p_recipient, maps[match], method, adapter)
            fit_flops = 0.0
            alphas = _alpha_grid(adapter, conv, p_donor, p_recipient, method)
        fit_s = time.perf_counter() - t0
        fits[name] = conv
        flops += fit_flops
        per_layer = pasted_deltas(recipient, adapter, conv)
        for alpha, rule in alphas:
            t1 = time.perf_counter()
            margins = response_margins(recipient, targets, per_layer, alpha, batch_size)
            flops += score_flops
            rows.append(_row(name, method, match, alpha, rule, margins, targets, fit_flops, score_flops, fit_s,
                             time.perf_counter() - t1))
    table = pd.DataFrame(rows)
    pasted = table[table.method != "none"]
    best = pasted.sort_values(["criterion", "alpha"], ascending=[False, True], kind="stable").iloc[0]
    return Transfer(adapter, fits[best.candidate], float(best.alpha), positions, str(best.candidate), table,
                    flops, time.perf_counter() - start, recipient)


def _alpha_grid(adapter: Adapter, conv: Converters, p_donor, p_recipient, method: str) -> list[tuple[float, str]]:
    """α = 1 and ``ALPHA_FACTORS`` × the norm-matched α (skipped when the paste is zero on every profile prompt)."""
    grid = [(1.0, "1")]
    try:
        norm = norm_matched_alpha(adapter, conv, p_donor, p_recipient)
    except ValueError:
        return grid
    if math.isfinite(norm) and norm > 0:
        grid += [(f * norm, f"{f:g}×norm") for f in ALPHA_FACTORS if not math.isclose(f * norm, 1.0)]
    return grid


def _row(name: str, method: str, match: str, alpha: float, rule: str, margins: torch.Tensor, targets: DonorTargets,
         fit_flops: float, score_flops: float, fit_s: float, score_s: float = 0.0) -> dict:
    return {"candidate": name, "method": method, "match": match, "alpha": alpha, "alpha_rule": rule,
            "criterion": criterion(margins, targets.changed), **group_preferences(margins, targets.changed),
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

