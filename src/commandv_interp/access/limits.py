"""Stage 1 (access): consumes a :class:`ModelAccess` and prompts (or a batch), produces a refusal before any model
runs when they do not fit the model's context.

Learned position tables (GPT-2) raise ``IndexError`` past their end; rotary models (Llama, Qwen2) run on but
were never trained there. Either way the check belongs before the work: the prompt pass, and a generation of
``new_tokens`` more.
"""

from __future__ import annotations

from commandv_interp.access.base import check_fits_context, context_length  # defined beside ModelAccess, which checks

__all__ = ["context_length", "check_fits_context"]
