"""Consumes a finished label-free search, produces a :class:`Transfer` (the chosen edit, the
configuration and fingerprints it was made with, every candidate considered) and its saved folder.

A transfer folder holds ``transfer.json`` (choice, configuration, fingerprints, digests), ``donor_adapter/`` (the
donor's whole adapter), ``adapter/`` and ``converters.safetensors`` (the paste, when the choice is one: the adapter
is the subset of the donor's layers pasted), ``polished/`` (when the choice is polished), ``compiled/`` (the chosen
edit as a native recipient adapter), ``candidates.csv``, ``answers.json`` (the donor's answers with and without its
edit that the criterion judged, :class:`~commandv_interp.pipeline.lora_teacher.DonorAnswers`; absent from folders
saved before transfers kept them), an optional ``report.md``, and ``manifest.json`` over all of
them with their SHA-256 and the configuration (:func:`~commandv_interp.manifest.write_manifest`). :func:`load_transfer`
verifies the folder as a whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from commandv_interp.access import ModelAccess, open_model
from commandv_interp.adapters import Adapter, load_adapter, save_adapter
from commandv_interp.adapters.edit import Edit
from commandv_interp.adapters.linear_form import has_linear_form
from commandv_interp.converters import Converters
from commandv_interp.io import atomic_write, read_json, tensors_checksum, write_json
from commandv_interp.manifest import file_digest, verify_manifest, write_manifest
from commandv_interp.paste import apply_adapter, compile_paste, paste
from commandv_interp.pipeline.candidates import Candidate
from commandv_interp.pipeline.compute import compute_table
from commandv_interp.pipeline.config import TransferConfig
from commandv_interp.pipeline.fingerprints import Fingerprints
from commandv_interp.pipeline.folder_swap import replace_folder
from commandv_interp.pipeline.lora_teacher import DonorAnswers
from commandv_interp.pipeline.to_peft import LORA_STEPS, LoraDistillation, to_peft
from commandv_interp.prompts import prompts_fingerprint
from commandv_interp.types import PositionRule
from commandv_interp.version import __version__

__all__ = ["Transfer", "load_transfer", "KIND"]

KIND = "commandv.transfer"
FIX = "re-create it with commandv transfer (or commandv transfer --replay)"


@dataclass(frozen=True, eq=False)  # eq=False: it holds a DataFrame and models, compared by identity
class Transfer:
    """The edit :func:`~commandv_interp.pipeline.label_free.transfer` chose, how it was made, and what it considered.

    Attributes:
        config: the settings of the call (:class:`~commandv_interp.pipeline.config.TransferConfig`).
        fingerprints: its prompts, both models and the donor's whole adapter.
        donor_adapter: the donor's whole adapter (its answers are what the transfer reproduces).
        adapter, converters, positions: the chosen paste (``adapter`` is ``donor_adapter`` or the subset of its
            layers the choice pastes; ``converters`` is None when the distillation from scratch was chosen).
        choice: the chosen candidate's name (``<method>/<match>``, ``…/layers=<l>+<l>`` for a subset of the
            adapter's layers, ``<paste>+polish/<steps>`` for a polished paste, ``scratch+polish/<steps>`` for the
            distillation baseline).
        polished: the chosen native recipient adapter when the choice is polished (what :meth:`paste` applies and
            :meth:`compile` returns), else None.
        candidates: one row per scoring of a candidate: ``candidate, stage, method, match, layers, polish_steps,
            polish_lr, paper_exact, fit_flops, fit_s, criterion, agree_changed, agree_unchanged, lift, lift_changed,
            lift_unchanged, n_scoring, n_changed, score_flops, score_s`` (the first row is the recipient without a
            paste; stage 1 rows are scored on half of the scoring prompts, stages 2–4 on all; a polished row's
            ``fit_flops`` is its round of training; stage 4 rows are the chosen polished adapter at other scales,
            ``…*scale=<s>``, :mod:`~commandv_interp.pipeline.scale`).
        flops, wall_s: the whole call (targets, profiles, fits, scoring and polish).
        answer_span: the donor's answers as the criterion judged them: ``(tokens, words)``, the new tokens they
            were generated with and the behavior span they were cut to (0 words: not cut).
        considered: every candidate scored, by name (not saved).
        donor_answers: the donor's answers with and without its whole edit to every prompt, as the criterion judged
            them (saved as ``answers.json``; what :meth:`to_peft` reuses on these prompts); None for a folder saved
            before transfers kept them.
    """

    config: TransferConfig
    fingerprints: Fingerprints
    donor_adapter: Adapter = field(repr=False)
    adapter: Adapter = field(repr=False)
    converters: Converters | None = field(repr=False)
    positions: PositionRule
    choice: str
    candidates: pd.DataFrame = field(repr=False)
    polished: Adapter | None = field(default=None, repr=False)
    flops: float = 0.0
    wall_s: float = 0.0
    recipient_model: ModelAccess | None = field(default=None, repr=False)
    answer_span: tuple[int, int] = (0, 0)
    considered: dict[str, Candidate] = field(default_factory=dict, repr=False)
    donor_answers: DonorAnswers | None = field(default=None, repr=False)

    @classmethod
    def from_search(cls, config: TransferConfig, fingerprints: Fingerprints, donor_adapter: Adapter,
                    chosen: Candidate, finalist: Candidate | None, candidates: pd.DataFrame,
                    considered: dict[str, Candidate], flops: float, wall_s: float,
                    recipient_model: ModelAccess, answer_span: tuple[int, int],
                    donor_answers: DonorAnswers | None = None) -> Transfer:
        """The transfer of ``chosen``: a paste (``finalist`` itself), its polish (a native adapter started from
        ``finalist``), or a fresh adapter's polish (no paste: ``finalist`` is then ignored)."""
        if chosen.is_paste:
            paste_of, polished = chosen, None
        else:
            paste_of = finalist if chosen.method != "scratch" else None
            polished = chosen.edit
        adapter = paste_of.edit if paste_of is not None else donor_adapter
        converters = paste_of.converters if paste_of is not None else None
        return cls(config, fingerprints, donor_adapter, adapter, converters, donor_adapter.positions, chosen.name,
                   candidates, polished, flops, wall_s, recipient_model, answer_span, dict(considered), donor_answers)

    @property
    def alpha(self) -> float:
        """The scale of the paste: always 1 (the polish learns the scale)."""
        return 1.0

    @property
    def compute(self) -> pd.DataFrame:
        """Where the call's FLOPs went, part by part (:func:`~commandv_interp.pipeline.compute.compute_table`)."""
        return compute_table(self)

    @property
    def rounds(self) -> dict[str, Adapter]:
        """Every polish round's native adapter, by candidate name: a view of ``considered`` (empty once loaded)."""
        return {name: c.edit for name, c in self.considered.items() if c.stage == 3}

    @property
    def layer_map(self) -> dict[int, int]:
        """Donor layer → recipient layer of the paste (``{}`` for the distillation baseline, which has none)."""
        return self.converters.layer_map() if self.converters is not None else {}

    def paste(self, recipient_model: ModelAccess | None = None):
        """The chosen edit as a context manager: the polished native adapter, or
        ``cv.paste(recipient_model, adapter, converters, positions)``."""
        target = recipient_model if recipient_model is not None else self.recipient_model
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
                steps: int = LORA_STEPS, seed: int | None = None, teacher: Edit | None = None,
                progress: bool = True) -> LoraDistillation:
        """The transfer as a recipient LoRA in PEFT's format, distilled from the donor+edit's answers to ``prompts``
        over the whole answer, cut to this transfer's ``answer_span`` and held out as its ``config`` splits them
        (``seed``: its ``config.seed`` by default; :func:`~commandv_interp.pipeline.to_peft.to_peft`).

        On this transfer's own prompts the answers are the ones it judged and kept (:attr:`donor_answers`): the
        donor generates nothing, and the result's ``teacher_flops`` is 0 (the transfer paid for them, in its
        ``flops``). On other prompts, with ``teacher``, with another donor, or for a folder saved before transfers
        kept their answers, they are generated from the donor+edit, and the result's ``teacher_note`` says why. The
        teacher is the donor's whole edit; a transfer loaded from disk keeps only the surrogate of a LoRA or steering
        vector, so when the answers must be generated, pass that edit as ``teacher``."""
        if self.recipient_model is None:
            raise ValueError("this Transfer was loaded from disk and holds no recipient: load_transfer(folder, "
                             "recipient_model)")
        kept, why = self._kept_answers(donor_model, teacher)
        result = to_peft(donor_model, self.recipient_model, teacher if teacher is not None else self.donor_adapter,
                         prompts, folder, rank, steps, self.config.seed if seed is None else seed, self.answer_span,
                         scoring_fraction=self.config.scoring_fraction, progress=progress, answers=kept)
        return result if why is None else dataclasses.replace(result, teacher_note=why)

    def _kept_answers(self, donor_model: ModelAccess, teacher: Edit | None) -> tuple[DonorAnswers | None, str | None]:
        """The kept answers :meth:`to_peft` may reuse (None: generate them, for the reason given)."""
        if self.donor_answers is None:
            return None, "this transfer keeps no answers (saved before transfers kept them): generated again"
        if teacher is not None:
            return None, "teacher= was given: the answers were generated from it"
        try:
            self.fingerprints.donor_model.check(donor_model, "donor", f"the transfer {self.choice!r}")
        except ValueError:
            return None, "the donor given is not the transfer's: the answers were generated from it"
        return self.donor_answers, None

    def edit_digest(self) -> str:
        """SHA-256 (16 hex digits) of the edit this transfer applies: the polished adapter's digest, or the pasted
        adapter's digest with the converters' tensors as saved (float32), so that a loaded transfer and the one it
        was saved from agree."""
        if self.polished is not None:
            return self.polished.digest()
        tensors = {f"{i}.{direction}.{part}": getattr(getattr(pair, direction), part).to(torch.float32)
                   for i, pair in enumerate(self.converters.pairs) for direction in ("to_donor", "to_recipient")
                   for part in ("left", "right", "bias") if getattr(getattr(pair, direction), part) is not None}
        layers = json.dumps([[p.donor_layer, p.recipient_layer] for p in self.converters.pairs])
        payload = f"{self.adapter.digest()}:{layers}:{tensors_checksum(tensors)}"
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def check_models(self, donor_model: ModelAccess | None, recipient_model: ModelAccess | None) -> None:
        """Refuse a donor or recipient other than the ones this transfer was made with (config hash and weights)."""
        where = f"the transfer {self.choice!r}"
        if donor_model is not None:
            self.fingerprints.donor_model.check(donor_model, "donor", where)
        if recipient_model is not None:
            self.fingerprints.recipient_model.check(recipient_model, "recipient", where)

    def save(self, folder: str | Path, sources: dict | None = None, report: str | None = None) -> Path:
        """Write the transfer folder (see the module doc), replacing an earlier transfer folder as a whole.

        Args:
            folder: a new or empty folder, or an earlier transfer folder (other non-empty folders are refused).
            sources: where the inputs came from (model paths or zoo names, ...), recorded for ``--replay``.
            report: markdown written as ``report.md``.
        """
        folder = Path(folder)
        _check_writable(folder)
        return replace_folder(folder, lambda staging: self._write(staging, sources, report))

    def _write(self, folder: Path, sources: dict | None, report: str | None) -> None:
        save_adapter(self.donor_adapter, folder / "donor_adapter")
        if self.converters is not None:
            save_adapter(self.adapter, folder / "adapter")
            self.converters.save(folder / "converters.safetensors")
        if self.polished is not None:
            save_adapter(self.polished, folder / "polished")
        compiled = None
        if self.polished is not None or all(has_linear_form(iv) for iv in self.adapter.interventions.values()):
            compiled = self.compile()
            save_adapter(compiled, folder / "compiled")
        atomic_write(folder / "candidates.csv", lambda p: self.candidates.to_csv(p, index=False))
        if self.donor_answers is not None:
            write_json(folder / "answers.json", self.donor_answers.to_dict())
        if report is not None:
            atomic_write(folder / "report.md", lambda p: p.write_text(report))
        meta = {"kind": KIND, "choice": self.choice, "alpha": self.alpha, "positions": self.positions,
                "config": self.config.to_dict(), "fingerprints": self.fingerprints.to_dict(),
                "paste": self.converters is not None,
                "pasted_digest": self.adapter.digest() if self.converters is not None else None,
                "polished_digest": self.polished.digest() if self.polished is not None else None,
                "compiled_digest": compiled.digest() if compiled is not None else None,
                "edit_digest": self.edit_digest(),
                "converters_sha256": (file_digest(folder / "converters.safetensors") if self.converters is not None
                                      else None),
                "layer_map": {str(k): v for k, v in self.layer_map.items()}, "n_candidates": len(self.candidates),
                "answer_span": list(self.answer_span),
                "answers_sha256": (file_digest(folder / "answers.json") if self.donor_answers is not None else None),
                "flops": self.flops, "wall_s": self.wall_s, "sources": sources, "library_version": __version__}
        write_json(folder / "transfer.json", meta)
        write_manifest(folder, {"kind": KIND, "config": self.config.to_dict()})


def _check_writable(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} exists and is not a folder; choose a folder for the transfer")
    if folder.is_dir() and any(folder.iterdir()):
        meta = read_json(folder / "transfer.json") if (folder / "transfer.json").is_file() else None
        if not (isinstance(meta, dict) and meta.get("kind") == KIND):
            raise ValueError(f"{str(folder)!r} holds other files and is not a transfer folder; choose a new or empty "
                             "folder")


def load_transfer(folder: str | Path, recipient_model: ModelAccess | None = None) -> Transfer:
    """Read a folder written by :meth:`Transfer.save`, verified as a whole: the manifest's digest of every file
    (nothing missing, edited, swapped or truncated; files added later, such as the CLI's output marker, are not
    read), then the consistency of what ``transfer.json`` says with the artifacts; with ``recipient_model``, that it
    is the recipient the transfer was made with (config and weights). Each refusal is a ``ValueError`` naming the
    part."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder; pass a folder written by commandv transfer")
    if not (folder / "transfer.json").is_file():
        raise ValueError(f"{str(folder)!r} is not a commandv transfer folder (no transfer.json)")
    try:
        manifest = verify_manifest(folder)
    except FileNotFoundError as err:  # a missing part is a broken folder, refused like an edited one
        raise ValueError(f"{err}; {FIX}") from None
    except ValueError as err:
        raise ValueError(f"{err}; {FIX}") from None
    meta = read_json(folder / "transfer.json")
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise ValueError(f"{str(folder)!r} is not a commandv transfer folder (transfer.json kind "
                         f"{meta.get('kind') if isinstance(meta, dict) else meta!r})")
    config = TransferConfig.from_dict(meta.get("config"))
    if manifest != {"kind": KIND, "config": config.to_dict()}:
        raise ValueError(f"{str(folder / 'transfer.json')!r}: its configuration differs from the manifest's; {FIX}")
    fingerprints = Fingerprints.from_dict(meta.get("fingerprints") or {})
    donor_adapter = _adapter_with_digest(folder, "donor_adapter", fingerprints.donor_adapter)
    adapter, converters, polished = donor_adapter, None, None
    if meta.get("paste"):
        adapter = _adapter_with_digest(folder, "adapter", meta.get("pasted_digest"))
        if file_digest(folder / "converters.safetensors") != meta.get("converters_sha256"):
            raise ValueError(f"{str(folder / 'converters.safetensors')!r} is not the converters this transfer chose "
                             f"(its SHA-256 differs from transfer.json's); {FIX}")
        converters = Converters.load(folder / "converters.safetensors")
        converters.check_adapter(adapter)
    if meta.get("polished_digest") is not None:
        polished = _adapter_with_digest(folder, "polished", meta["polished_digest"])
    _check_consistent(folder, meta, converters, polished, adapter)
    candidates = _read_candidates(folder, meta)
    span = meta.get("answer_span")
    if not (isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) and x >= 0 for x in span)):
        raise ValueError(f"{str(folder / 'transfer.json')!r}: answer_span {span!r} is not two counts; {FIX}")
    answers = _read_answers(folder, meta.get("answers_sha256"), fingerprints, (span[0], span[1]))
    t = Transfer(config, fingerprints, donor_adapter, adapter, converters, adapter.positions, str(meta["choice"]),
                 candidates, polished, float(meta["flops"]), float(meta["wall_s"]), answer_span=(span[0], span[1]),
                 donor_answers=answers)
    if recipient_model is None:
        return t
    access = open_model(recipient_model)
    t.check_models(None, access)
    return dataclasses.replace(t, recipient_model=access)


def _read_candidates(folder: Path, meta: dict) -> pd.DataFrame:
    """``candidates.csv``, refused unless it lists the recorded number of candidates and the choice among them."""
    try:
        candidates = pd.read_csv(folder / "candidates.csv")
    except (ValueError, pd.errors.ParserError) as err:
        raise ValueError(f"{str(folder / 'candidates.csv')!r} cannot be read ({' '.join(str(err).split())}); "
                         f"{FIX}") from None
    if ("candidate" not in candidates.columns or len(candidates) != meta.get("n_candidates")
            or meta["choice"] not in set(candidates.candidate)):
        raise ValueError(f"{str(folder / 'candidates.csv')!r} does not list the {meta.get('n_candidates')} "
                         f"candidates of this transfer; {FIX}")
    return candidates


def _read_answers(folder: Path, digest: object, fingerprints: Fingerprints,
                  span: tuple[int, int]) -> DonorAnswers | None:
    """``answers.json``, refused unless it is the file ``transfer.json`` records (SHA-256) and answers exactly the
    transfer's prompts with its answer span; None for a folder saved before transfers kept their answers."""
    if digest is None:
        return None
    path = folder / "answers.json"
    if not path.is_file() or file_digest(path) != digest:
        raise ValueError(f"{str(path)!r} is not the answers this transfer judged (missing, or its SHA-256 differs "
                         f"from transfer.json's); {FIX}")
    try:
        answers = DonorAnswers.from_dict(read_json(path), repr(str(path)))
    except ValueError as err:
        raise ValueError(f"{err}; {FIX}") from None
    if (prompts_fingerprint(answers.prompts), len(answers.prompts)) != (fingerprints.prompts, fingerprints.n_prompts) \
            or answers.span != span:
        raise ValueError(f"{str(path)!r} answers other prompts or another answer span than this transfer's "
                         f"(span {answers.span!r}, transfer.json says {span!r}); {FIX}")
    return answers


def _adapter_with_digest(folder: Path, name: str, digest: object) -> Adapter:
    adapter = load_adapter(folder / name)
    if adapter.digest() != digest:
        raise ValueError(f"the adapter in {str(folder / name)!r} is not the one this transfer records (digest "
                         f"{adapter.digest()!r}, transfer.json says {digest!r}); {FIX}")
    return adapter


def _check_consistent(folder: Path, meta: dict, converters: Converters | None, polished: Adapter | None,
                      adapter: Adapter) -> None:
    """What ``transfer.json`` says must match the artifacts: α 1, the adapter's positions, a polish where the choice
    names one, a paste unless the choice is the distillation from scratch."""
    choice = meta.get("choice")
    problems = []
    if not isinstance(choice, str):
        problems.append(f"choice {choice!r} is not a name")
    elif ("+polish/" in choice) != (polished is not None):
        problems.append(f"choice {choice!r} and polished_digest {meta.get('polished_digest')!r} disagree")
    elif choice.startswith("scratch+") == (converters is not None):
        problems.append(f"choice {choice!r} and paste {meta.get('paste')!r} disagree")
    if meta.get("alpha") != 1.0:
        problems.append(f"alpha is {meta.get('alpha')!r}; a transfer's paste has α = 1")
    if meta.get("positions") != adapter.positions:
        problems.append(f"positions {meta.get('positions')!r} differ from the adapter's {adapter.positions!r}")
    if problems:
        raise ValueError(f"{str(folder / 'transfer.json')!r}: {problems[0]}; {FIX}")
