"""commandv_interp: Command-V behavior transfer between LLMs as a mechanistic-interpretability toolkit.

Pipeline (data flows one way): access → profiles → correspondence → converters → adapters/paste
→ analysis → plotting.
"""

from commandv_interp.access import ModelAccess, open_model

__version__ = "0.1.0"

__all__ = ["ModelAccess", "open_model", "__version__"]
