"""The pasted edit inside a ``with`` block, native adapters, and the compiled native form."""

from commandv_interp.paste.compile import compile_paste
from commandv_interp.paste.paste import apply_adapter, paste

__all__ = ["apply_adapter", "compile_paste", "paste"]
