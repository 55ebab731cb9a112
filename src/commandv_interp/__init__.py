"""commandv_interp: Command-V behavior transfer between LLMs as a mechanistic-interpretability toolkit.

Pipeline (data flows one way): access → profiles (adapters beside them) → correspondence → converters → paste →
pipeline → analysis → plotting. ``zoo`` holds the embedded model zoo (fixtures), ``app`` the CLI and demo.
The subpackages ``analysis``, ``plotting`` and ``zoo`` are imported on first attribute access.
"""

import importlib as _importlib

from commandv_interp.version import __version__  # noqa: F401


from commandv_interp.access import ModelAccess, open_model  # noqa: E402
from commandv_interp.adapters import Adapter, load_adapter, save_adapter, train_adapter  # noqa: E402
from commandv_interp.adapters.edit import apply_edit, load_edit  # noqa: E402
from commandv_interp.converters import (Converters, fit_chained_converters, fit_converters,  # noqa: E402
                                        norm_matched_alpha)
from commandv_interp.correspondence import LayerMap, match_layers, relative_depth_map  # noqa: E402
from commandv_interp.paste import apply_adapter, compile_paste, paste  # noqa: E402
from commandv_interp.pipeline import Steering, Transfer, load_transfer, steering_transfer, transfer  # noqa: E402
from commandv_interp.profiles import ActivationProfile, profile  # noqa: E402
from commandv_interp.prompts import load_prompts  # noqa: E402

_LAZY = ("analysis", "plotting", "zoo")

__all__ = [
    "ActivationProfile",
    "Adapter",
    "Converters",
    "Steering",
    "Transfer",
    "LayerMap",
    "ModelAccess",
    "__version__",
    "apply_adapter",
    "apply_edit",
    "compile_paste",
    "fit_chained_converters",
    "fit_converters",
    "load_adapter",
    "load_edit",
    "load_prompts",
    "load_transfer",
    "match_layers",
    "norm_matched_alpha",
    "open_model",
    "paste",
    "profile",
    "relative_depth_map",
    "save_adapter",
    "steering_transfer",
    "train_adapter",
    "transfer",
]


def __getattr__(name: str):
    if name in _LAZY:
        return _importlib.import_module(f"commandv_interp.{name}")
    raise AttributeError(f"module 'commandv_interp' has no attribute {name!r}")
