"""Consumes a saved transfer folder and the same models, adapter and prompts, produces a
:class:`Replay`: the transfer run again with the recorded configuration, and whether it chose the same candidate and
made the same edit (by digest).

The inputs are checked against the recorded fingerprints first (prompts, both models' configs and weights, the
donor's adapter), so that a replay that differs says the recipe, not the inputs, changed.

>>> Replay("ridge/depth", "ridge/depth", "ab12", "ab12").reproduced
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from commandv_interp.access import ModelAccess, open_model
from commandv_interp.adapters import Adapter
from commandv_interp.io import read_json
from commandv_interp.pipeline.fingerprints import Fingerprints
from commandv_interp.pipeline.label_free import run_transfer
from commandv_interp.pipeline.result import Transfer, load_transfer
from commandv_interp.pipeline.search import check_transfer_prompts

__all__ = ["Replay", "replay_transfer", "recorded_sources"]


@dataclass(frozen=True)
class Replay:
    """A recorded transfer's choice and edit digest beside the replayed ones."""

    recorded_choice: str
    choice: str
    recorded_digest: str
    digest: str

    @property
    def same_choice(self) -> bool:
        return self.choice == self.recorded_choice

    @property
    def same_digest(self) -> bool:
        return self.digest == self.recorded_digest

    @property
    def reproduced(self) -> bool:
        return self.same_choice and self.same_digest

    def to_dict(self) -> dict:
        return {"recorded_choice": self.recorded_choice, "choice": self.choice, "same_choice": self.same_choice,
                "recorded_digest": self.recorded_digest, "digest": self.digest, "same_digest": self.same_digest,
                "reproduced": self.reproduced}


def replay_transfer(folder: str | Path, donor_model: ModelAccess, recipient_model: ModelAccess, adapter: Adapter,
                    prompts: Sequence[str], progress: bool = False) -> tuple[Replay, Transfer]:
    """Run the transfer saved in ``folder`` again on the same inputs, with its recorded configuration.

    Raises:
        ValueError: the folder does not verify, or an input is not the one the transfer was made from (named).

    Returns:
        The :class:`Replay` comparison and the replayed :class:`~commandv_interp.pipeline.result.Transfer`.
    """
    recorded = load_transfer(folder)
    donor, recipient = open_model(donor_model), open_model(recipient_model)
    given = Fingerprints.of(donor, recipient, adapter, check_transfer_prompts(prompts))
    differ = recorded.fingerprints.differences(given)
    if differ:
        raise ValueError(f"the transfer in {str(folder)!r} was made from other {', '.join(differ)} than the ones "
                         "given (fingerprints differ); pass the inputs it was made from")
    again = run_transfer(donor, recipient, adapter, prompts, recorded.config, progress)
    return Replay(recorded.choice, again.choice, recorded.edit_digest(), again.edit_digest()), again


SOURCE_KEYS = ("donor", "recipient", "adapter", "prompts", "limit", "backend")


def recorded_sources(folder: str | Path) -> dict:
    """Where the inputs of the transfer saved in ``folder`` came from (model paths or zoo names, the adapter, the
    prompts and their limit, the backend, as ``commandv transfer`` records them), after verifying the folder."""
    load_transfer(folder)
    sources = read_json(Path(folder) / "transfer.json").get("sources")  # type: ignore[union-attr]
    if not isinstance(sources, dict) or any(key not in sources for key in SOURCE_KEYS):
        raise ValueError(f"the transfer in {str(folder)!r} records no inputs (it was made through the Python API); "
                         "pass DONOR RECIPIENT ADAPTER_FOLDER PROMPTS with --replay")
    return sources
