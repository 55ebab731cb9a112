"""Label-free transfer in one call (and its steering-vector baseline); profile → match → fit
with its cost; artifact storage."""

from commandv_interp.pipeline.derive import Derivation, ProfilePair, derive, profile_pair
from commandv_interp.pipeline.storage import converter_numbers, storage_table
from commandv_interp.pipeline.label_free import Transfer, load_transfer, transfer
from commandv_interp.pipeline.steering import Steering, steering_transfer

__all__ = ["Derivation", "ProfilePair", "Steering", "Transfer", "converter_numbers", "derive", "load_transfer",
           "profile_pair", "steering_transfer", "storage_table", "transfer"]
