"""Consumes the parsed TOML of a study file, produces the keyword arguments of a
:class:`~commandv_interp.analysis.study.Study`, or one ``ValueError`` line naming the key, the value and the fix.

The schema (pydantic, strict: no string→number or float→int coercion) checks types, ranges and axis shapes before
any work: every axis is a non-empty list (``behaviors = "jailbreak"`` is refused, not split into letters), sizes and
limits are ints (``limit = "8"`` and ``limit = 2.5`` are refused), ``profile_sizes`` are ``>= 0`` (0: all prompts),
α are finite within ``±validation.MAX_ALPHA`` or ``norm`` / ``norm*<factor>``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from commandv_interp.validation import MAX_ALPHA

__all__ = ["StudyFile", "study_arguments"]

_Axis = Annotated[list[str], Field(min_length=1)]
_Pair = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=2, max_length=2)]
_Alpha = Annotated[float, Field(ge=-MAX_ALPHA, le=MAX_ALPHA, allow_inf_nan=False)] | str


class StudyFile(BaseModel):
    """The keys a study file may hold (all optional but ``pairs`` and ``behaviors``; defaults are the Study's)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    pairs: Annotated[list[_Pair], Field(min_length=1)]
    behaviors: _Axis
    methods: _Axis | None = None
    matches: _Axis | None = None
    profile_sets: _Axis | None = None
    profile_sizes: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = None
    alphas: Annotated[list[_Alpha], Field(min_length=1)] | None = None
    positions: _Axis | None = None
    subsets: _Axis | None = None
    limit: Annotated[int, Field(ge=1)] | None = None
    n_boot: Annotated[int, Field(ge=1)] | None = None
    seed: Annotated[int, Field(ge=0)] | None = None
    name: Annotated[str, Field(min_length=1)] | None = None


def _where(loc: tuple) -> str:
    """``key`` or ``key entry i`` (pydantic's union-branch names, e.g. ``constrained-float``, left out)."""
    index = [part for part in loc if isinstance(part, int)]
    return str(loc[0]) + (f" entry {index[0]}" if index else "")


_HINTS = {"pairs": "pairs must be a list of [donor, recipient] pairs, e.g. pairs = [[\"llama-6x128\", \"gpt2-4x96\"]]",
          "profile_sizes": "profile_sizes must be a list of ints >= 0 (0: all prompts), e.g. profile_sizes = [24]",
          "alphas": f"alphas must be a list of finite numbers within ±{MAX_ALPHA:g} or 'norm' / 'norm*<factor>'",
          "limit": "limit must be an int >= 1 without quotes or decimals, e.g. limit = 8",
          "n_boot": "n_boot must be an int >= 1, e.g. n_boot = 1000", "seed": "seed must be an int >= 0, e.g. seed = 0"}


def _reason(error: dict, raw: dict) -> str:
    """One line: the key (and entry), the value given, what the schema wants."""
    key = str(error["loc"][0])
    shown = f"{_where(error['loc'])} = {error.get('input')!r} is refused"
    if error["type"] == "too_short" and raw.get(key) == []:
        return f"{key} is empty; give each axis at least one value"
    hint = _HINTS.get(key, f"{key} must be a list of names, e.g. {key} = [\"...\"]")
    return f"{shown} ({error['msg'].lower()}): {hint}"


def study_arguments(raw: dict, where: str) -> dict:
    """``raw`` (a parsed study file) as :class:`Study` arguments: axes as tuples, ``pairs`` as tuples of two names,
    ``profile_sizes`` 0 → None; refused with one line (the first problem) when it breaks the schema."""
    try:
        parsed = StudyFile.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] == "extra_forbidden":
            unknown = sorted(set(raw) - set(StudyFile.model_fields))
            raise ValueError(f"study file {where} has unknown keys {unknown}; known: "
                             f"{sorted(StudyFile.model_fields)}") from None
        raise ValueError(f"study file {where}: {_reason(first, raw)}") from None
    args = {}
    for key, value in parsed.model_dump(exclude_none=True).items():
        if key == "pairs":
            value = tuple(tuple(pair) for pair in value)
        elif key == "profile_sizes":
            value = tuple(None if v == 0 else v for v in value)
        elif isinstance(value, list):
            value = tuple(value)
        args[key] = value
    return args
