"""ReFT interventions, the :class:`Adapter` that groups them, training and pyreft folder I/O."""

from commandv_interp.adapters.adapter import Adapter
from commandv_interp.adapters.interventions import (
    ACTIVATIONS,
    INTERVENTION_KINDS,
    DiReFT,
    Intervention,
    LoReFT,
    NodiReFT,
    NoReFT,
    make_intervention,
)
from commandv_interp.adapters.pyreft_format import load_pyreft_folder, save_pyreft_folder
from commandv_interp.adapters.train import TrainingRecord, train_adapter

load_adapter = load_pyreft_folder
save_adapter = save_pyreft_folder

__all__ = [
    "ACTIVATIONS", "INTERVENTION_KINDS", "Adapter", "DiReFT", "Intervention", "LoReFT", "NodiReFT", "NoReFT",
    "TrainingRecord", "load_adapter", "load_pyreft_folder", "make_intervention", "save_adapter",
    "save_pyreft_folder", "train_adapter",
]
