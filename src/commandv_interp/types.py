"""Shared vocabulary. Consumes nothing internal; produces type aliases, enums and dim names.

Dim names used across the package:
``batch pos d_model`` inside one model; ``n_prompts d_donor d_recipient rank`` across models.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal, get_args

import torch
from jaxtyping import Bool, Float, Int

Tensor = torch.Tensor

__all__ = [
    "Bool",
    "Float",
    "Int",
    "Tensor",
    "Site",
    "PositionRule",
    "POSITION_RULES",
    "check_choice",
]


class Site(str, Enum):
    """Named residual-stream sites. Only ``RESID_POST`` (block output) is used by Command-V."""

    RESID_POST = "resid_post"


PositionRule = Literal["last", "last+decode", "all", "all+decode", "first_last"]
"""Where an edit acts.

- ``last``: the last prompt token of every row (the paper's setting), prompt pass only.
- ``last+decode``: the last prompt token and every generated token.
- ``all``: every non-padding prompt token, prompt pass only.
- ``all+decode``: every prompt token and every generated token.
- ``first_last``: the first ``k`` and last ``k`` prompt tokens (pyreft's ``f<k>+l<k>``), prompt pass only.
"""

POSITION_RULES: tuple[str, ...] = get_args(PositionRule)


def check_choice(name: str, value: object, choices: tuple) -> None:
    """Raise a ValueError naming ``value`` and the allowed ``choices`` if it is not one of them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)!r}")
