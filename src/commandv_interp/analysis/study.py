"""Consumes a declarative :class:`Study` (a grid of transfer settings) and a :class:`StudyWorld`
(models, adapters, prompts and a labeled scorer), produces one tidy DataFrame of labeled outcomes with bootstrap CIs.

An ablation is the product of its axes: donor → recipient pairs, behaviors, converter methods (``pinv``, ``ridge``,
``affine``, ``procrustes``, ``interface``, ``interface-chained``, or ``transfer`` for the label-free choice), layer
matching, profile prompt sets and sizes, α (a number, ``norm`` or ``norm*<f>`` for a multiple of the norm-matched α;
for ``interface-chained`` the α it is chained under), position rules and donor-layer subsets (``all``, ``single``,
``leave_one_out``, ``cumulative_first``, ``cumulative_last``). Every profile, fit and cell result is cached in the
output folder under a hash of what determines it, so a re-run (after an interruption, or with more axis values)
computes only what is new. Results: one row per cell × metric with the point estimate and a percentile bootstrap
95% CI over test prompts (``scipy.stats.bootstrap``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from commandv_interp.access import ModelAccess
from commandv_interp.adapters import Adapter
from commandv_interp.analysis.attribution import ATTRIBUTION_MODES, layer_subsets
from commandv_interp.converters import Converters, fit_chained_converters, fit_converters, norm_matched_alpha
from commandv_interp.correspondence import match_layers
from commandv_interp.io import atomic_write, finite_or_null, read_json, write_json
from commandv_interp.paste import paste
from commandv_interp.pipeline import load_transfer, transfer
from commandv_interp.profiles import ActivationProfile, profile
from commandv_interp.analysis.study_schema import study_arguments
from commandv_interp.validation import check_alpha, check_count

__all__ = ["Study", "StudyWorld", "Cell", "run_study", "bootstrap_rates", "METHODS"]

CELL_KIND = "commandv.study_cell"
METHODS = ("pinv", "ridge", "affine", "procrustes", "interface", "interface-chained", "transfer")
SUBSETS = ("all",) + ATTRIBUTION_MODES
COLUMNS = ("donor", "recipient", "behavior", "method", "match", "profile_set", "profile_size", "alpha", "positions",
           "subset", "layers", "alpha_used", "metric", "value", "ci_low", "ci_high", "n")


@runtime_checkable
class StudyWorld(Protocol):
    """What a study needs from the models it runs on (the zoo provides one: ``commandv_interp.app.sweep``)."""

    def load_model(self, name: str) -> ModelAccess: ...

    def load_adapter(self, donor: str, behavior: str) -> Adapter: ...

    def profile_prompts(self, profile_set: str, behavior: str, size: int | None) -> list[str]: ...

    def outcomes(self, recipient: ModelAccess, behavior: str, limit: int) -> list[dict[str, float]]:
        """Per test prompt, the rates it contributes to (1.0/0.0), scored under the recipient's active edits."""


@dataclass(frozen=True)
class Cell:
    """One configuration of a study."""

    donor: str
    recipient: str
    behavior: str
    method: str
    match: str
    profile_set: str
    profile_size: int | None
    alpha: float | str
    positions: str
    subset: str
    layers: tuple[int, ...] | None = None  # the donor layers pasted (None: all of the adapter's)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Study:
    """A grid of transfer settings; every axis is a list (the product is run)."""

    pairs: tuple[tuple[str, str], ...]
    behaviors: tuple[str, ...]
    methods: tuple[str, ...] = ("interface",)
    matches: tuple[str, ...] = ("depth",)
    profile_sets: tuple[str, ...] = ("task",)
    profile_sizes: tuple[int | None, ...] = (None,)
    alphas: tuple[float | str, ...] = (1.0,)
    positions: tuple[str, ...] = ("last",)
    subsets: tuple[str, ...] = ("all",)
    limit: int = 160
    n_boot: int = 1000
    seed: int = 0
    name: str = "study"

    def __post_init__(self) -> None:
        strings = [f.name for f in dataclasses.fields(self) if f.name != "name"
                   and isinstance(getattr(self, f.name), str)]
        if strings:
            raise ValueError(f"study axes {strings} are strings; give each as a list, e.g. behaviors=('refusal',)")
        check_count(self.limit, "limit")
        check_count(self.n_boot, "n_boot")
        for size in self.profile_sizes:
            check_count(size, "profile_sizes entry", allow_none=True)
        for axis, allowed in (("methods", METHODS), ("matches", ("depth", "similarity")), ("subsets", SUBSETS)):
            bad = [v for v in getattr(self, axis) if v not in allowed]
            if bad:
                raise ValueError(f"study {axis} {bad!r} not among {list(allowed)!r}")
        for alpha in self.alphas:
            _alpha_rule(alpha)
        empty = [f.name for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), tuple)
                 and not getattr(self, f.name)]
        if empty:
            raise ValueError(f"study axes {empty} are empty; give each at least one value")

    @classmethod
    def from_toml(cls, path: str | Path) -> "Study":
        """Read a study file: top-level keys are the field names (lists for axes; ``pairs`` as
        ``[["donor", "recipient"], ...]``; ``profile_sizes`` may hold ``0`` for "all")."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"cannot read study file {str(path)!r}: {err}") from err
        args = study_arguments(raw, repr(str(path)))  # the schema: types, ranges, axis shapes, before any work
        args.setdefault("name", path.stem)
        return cls(**args)


def _alpha_rule(alpha: float | str) -> tuple[str, float]:
    """``("fixed", a)`` or ``("norm", factor)``."""
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        return "fixed", check_alpha(alpha, "study alpha")
    if isinstance(alpha, str) and (alpha == "norm" or alpha.startswith("norm*")):
        try:
            factor = 1.0 if alpha == "norm" else float(alpha[5:])
        except ValueError as err:
            raise ValueError(f"study alpha {alpha!r}: write norm*<number>, e.g. norm*0.5") from err
        return "norm", check_alpha(factor, f"study alpha {alpha!r}: the factor")
    raise ValueError(f"study alpha {alpha!r} is neither a number nor 'norm' / 'norm*<factor>'")


def bootstrap_rates(records: Sequence[dict[str, float]], n_boot: int, seed: int) -> dict[str, tuple[float, float, float, int]]:
    """Per metric: the mean over the prompts that carry it and a percentile bootstrap 95% CI (``n`` prompts)."""
    from scipy.stats import bootstrap

    out = {}
    metrics = sorted({k for r in records for k in r})
    for metric in metrics:
        values = np.array([r[metric] for r in records if metric in r], dtype=float)
        point = float(values.mean())
        if len(values) < 2 or np.all(values == values[0]):
            out[metric] = (point, point, point, len(values))
            continue
        res = bootstrap((values,), np.mean, n_resamples=n_boot, method="percentile", random_state=seed,
                        vectorized=True)
        out[metric] = (point, float(res.confidence_interval.low), float(res.confidence_interval.high), len(values))
    return out


@dataclass
class _Cache:
    """Profiles, converters and transfers on disk under a hash of what determines them."""

    root: Path
    models: dict[str, ModelAccess] = field(default_factory=dict)

    def model(self, world: StudyWorld, name: str) -> ModelAccess:
        if name not in self.models:
            self.models[name] = world.load_model(name)
        return self.models[name]

    def profile(self, model: ModelAccess, prompts: list[str], layers: list[int] | None) -> ActivationProfile:
        key = _hash(model.name, model.config_hash, prompts, layers)
        path = self.root / "profiles" / f"{key}.safetensors"
        if path.exists():
            return ActivationProfile.load(path)
        prof = profile(model, prompts, layers=layers, progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.save(path)
        return prof

    def converters(self, key_parts: tuple, make: Callable[[], Converters]) -> Converters:
        path = self.root / "converters" / f"{_hash(*key_parts)}.safetensors"
        if path.exists():
            return Converters.load(path)
        conv = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        conv.save(path)
        return conv


def _hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_study(study: Study, world: StudyWorld, out: str | Path, progress: bool = True) -> pd.DataFrame:
    """Run every cell of ``study`` not already in ``out``; return all cells' tidy rows (also ``out/results.csv``).

    Rows: the cell's settings (``donor, recipient, behavior, method, match, profile_set, profile_size, alpha,
    positions, subset, layers``), ``alpha_used`` (the number pasted with), ``metric, value, ci_low, ci_high, n``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"study output {str(out)!r} exists and is not a folder; choose a folder")
    out.mkdir(parents=True, exist_ok=True)
    cache = _Cache(out / "cache")
    cells = _cells(study, world)
    frames = []
    for cell in tqdm(cells, desc=f"study {study.name}", disable=not progress):
        path = out / "cells" / f"{_hash(cell.key(), study.limit, study.n_boot, study.seed)}.json"
        if path.exists():
            rows = _read_cell(path)
        else:
            rows = _run_cell(study, world, cache, cell)
            path.parent.mkdir(parents=True, exist_ok=True)
            stored = finite_or_null(rows)  # as write_json stores them (NaN → None): the checksum reads back alike
            write_json(path, {"kind": CELL_KIND, "rows": stored, "checksum": _hash(CELL_KIND, stored)})
        frames.append(pd.DataFrame(rows))
    table = pd.concat(frames, ignore_index=True)[list(COLUMNS)]
    atomic_write(out / "results.csv", lambda p: table.to_csv(p, index=False))
    return table


def _read_cell(path: Path) -> list[dict]:
    """A cached cell's rows, refused when the file was edited (its checksum covers the rows)."""
    body = read_json(path)
    if not isinstance(body, dict) or body.get("kind") != CELL_KIND or not isinstance(body.get("checksum"), str) \
            or not isinstance(body.get("rows"), list) or body["checksum"] != _hash(CELL_KIND, body["rows"]):
        raise ValueError(f"cached cell {str(path)!r} was edited or is not a commandv study cell (its checksum does not "
                         "match); delete it and re-run to recompute the cell")
    return body["rows"]


def _cells(study: Study, world: StudyWorld) -> list[Cell]:
    cells = []
    axes = itertools.product(study.pairs, study.behaviors, study.methods, study.matches, study.profile_sets,
                             study.profile_sizes, study.alphas, study.positions, study.subsets)
    adapters: dict[tuple[str, str], list[int]] = {}
    for (donor, recipient), behavior, method, match, pset, size, alpha, pos, subset in axes:
        if method in ("interface-chained", "transfer") and match != study.matches[0]:
            continue  # these choose (or fix) their own layer map: one match value stands for all
        if method == "transfer" and alpha != study.alphas[0]:
            continue  # transfer chooses its own α
        if subset == "all":
            cells.append(Cell(donor, recipient, behavior, method, match, pset, size, alpha, pos, subset))
            continue
        if (donor, behavior) not in adapters:
            adapters[(donor, behavior)] = world.load_adapter(donor, behavior).layers
        for _, layers in layer_subsets(adapters[(donor, behavior)], [subset]):
            cells.append(Cell(donor, recipient, behavior, method, match, pset, size, alpha, pos, subset, layers))
    return cells


def _run_cell(study: Study, world: StudyWorld, cache: _Cache, cell: Cell) -> list[dict]:
    donor, recipient = cache.model(world, cell.donor), cache.model(world, cell.recipient)
    adapter = world.load_adapter(cell.donor, cell.behavior)
    prompts = world.profile_prompts(cell.profile_set, cell.behavior, cell.profile_size)
    if cell.method == "transfer":
        folder = cache.root / "transfers" / _hash(cell.donor, cell.recipient, adapter.digest(), prompts)
        if (folder / "transfer.json").exists():
            chosen = load_transfer(folder, recipient)
        else:
            chosen = transfer(donor, recipient, adapter, prompts, progress=False)
            chosen.save(folder)
        converters, alpha = chosen.converters, chosen.alpha
    else:
        converters, alpha = _fit(cache, donor, recipient, adapter, prompts, cell)
    pasted = adapter
    if cell.layers is not None:  # a subset of the adapter's layers, through the converters of those layers
        pasted, converters = adapter.restricted(cell.layers), converters.restricted(adapter, cell.layers)
    with paste(recipient, pasted, converters, positions=cell.positions, alpha=alpha):
        records = world.outcomes(recipient, cell.behavior, study.limit)
    base = {k: v for k, v in dataclasses.asdict(cell).items()}
    base["layers"] = ",".join(map(str, cell.layers if cell.layers is not None else adapter.layers))
    base["alpha"] = str(cell.alpha)
    return [base | {"alpha_used": alpha, "metric": m, "value": v, "ci_low": lo, "ci_high": hi, "n": n}
            for m, (v, lo, hi, n) in bootstrap_rates(records, study.n_boot, study.seed).items()]


def _fit(cache: _Cache, donor: ModelAccess, recipient: ModelAccess, adapter: Adapter, prompts: list[str],
         cell: Cell) -> tuple[Converters, float]:
    kind, value = _alpha_rule(cell.alpha)
    if cell.method == "interface-chained":
        if kind != "fixed":
            raise ValueError("interface-chained fits are chained under a fixed α; give numbers in alphas")
        conv = cache.converters(("chained", donor.config_hash, recipient.config_hash, adapter.digest(), prompts,
                                 value, cell.positions),
                                lambda: fit_chained_converters(donor, recipient, adapter, prompts, alpha=value,
                                                               positions=cell.positions))
        return conv, value
    p_donor = cache.profile(donor, prompts, adapter.layers)
    p_recipient = cache.profile(recipient, prompts, None)
    layer_map = match_layers(p_donor, p_recipient, cell.match, adapter.layers)
    conv = cache.converters((cell.method, cell.match, donor.config_hash, recipient.config_hash, prompts,
                             adapter.digest() if cell.method == "interface" else None),
                            lambda: fit_converters(p_donor, p_recipient, layer_map, cell.method,
                                                   adapter if cell.method == "interface" else None))
    alpha = value if kind == "fixed" else value * norm_matched_alpha(adapter, conv, p_donor, p_recipient)
    return conv, alpha
