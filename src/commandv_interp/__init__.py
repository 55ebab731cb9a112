"""commandv_interp: Command-V behavior transfer between LLMs as a mechanistic-interpretability toolkit.

Pipeline (data flows one way): access → profiles → correspondence → converters → adapters/paste
→ analysis → plotting.
"""

__version__ = "0.1.0"

from commandv_interp.access import ModelAccess, open_model  # noqa: E402
from commandv_interp.adapters import Adapter, load_adapter, save_adapter, train_adapter  # noqa: E402
from commandv_interp.calibration import norm_matched_alpha  # noqa: E402
from commandv_interp.chaining import fit_chained_interface_converters  # noqa: E402
from commandv_interp.compile import compile_paste  # noqa: E402
from commandv_interp.converters import Converters, fit_converters  # noqa: E402
from commandv_interp.correspondence import LayerMap, match_layers, relative_depth_map  # noqa: E402
from commandv_interp.interface import fit_interface_converters  # noqa: E402
from commandv_interp.paste import apply_adapter, paste  # noqa: E402
from commandv_interp.profiles import ActivationProfile, profile  # noqa: E402
from commandv_interp.prompts import load_prompts  # noqa: E402

__all__ = [
    "ActivationProfile",
    "Adapter",
    "apply_adapter",
    "compile_paste",
    "load_adapter",
    "paste",
    "save_adapter",
    "train_adapter",
    "Converters",
    "fit_chained_interface_converters",
    "fit_interface_converters",
    "LayerMap",
    "ModelAccess",
    "__version__",
    "fit_converters",
    "load_prompts",
    "match_layers",
    "relative_depth_map",
    "norm_matched_alpha",
    "open_model",
    "profile",
]
