"""Label-free transfer in one call (and its steering-vector baseline), its saved and replayable folder; profile →
match → fit with its cost; artifact storage."""

from commandv_interp.pipeline.derive import Derivation, ProfilePair, derive, profile_pair
from commandv_interp.pipeline.storage import converter_numbers, storage_table
from commandv_interp.pipeline.config import TransferConfig
from commandv_interp.pipeline.candidates import Candidate
from commandv_interp.pipeline.compute import compute_table
from commandv_interp.pipeline.result import Transfer, load_transfer
from commandv_interp.pipeline.label_free import run_transfer, transfer
from commandv_interp.pipeline.blind import BlindCriterionWarning
from commandv_interp.pipeline.replay import Replay, replay_transfer
from commandv_interp.pipeline.steering import Steering, steering_transfer

__all__ = ["BlindCriterionWarning", "Candidate", "Derivation", "ProfilePair", "Replay", "Steering", "Transfer",
           "TransferConfig", "compute_table", "converter_numbers", "derive", "load_transfer", "profile_pair",
           "replay_transfer", "run_transfer", "steering_transfer", "storage_table", "transfer"]
