"""Consumes a generated world's items and model responses, produces its behavior rates.

Per behavior, a target rate and a side rate (``RATES``): ``refusal`` / ``false_refusal`` (first word of the
response), ``format`` / ``accuracy`` (the whole response: k numbered steps along the chain, then the answer, nothing else;
and whether the answer is right), ``style`` / ``content`` (the whole persona frame, in order, over the full
≥ 18-word response; and whether the object's color and place are both named).

>>> from commandv_interp.zoo.generated.grammar import grammar
>>> from commandv_interp.zoo.generated.corpus import items, target
>>> g = grammar(1)
>>> its = items(g, "test")[:4]
>>> score(g, its, [target(g, i) for i in its])
{'format': 1.0, 'accuracy': 1.0}
"""

from __future__ import annotations

from collections.abc import Sequence

from commandv_interp.zoo.generated.corpus import STEP_COUNTS, _steps_parts
from commandv_interp.zoo.generated.grammar import GenItem, Grammar

__all__ = ["RATES", "outcomes", "score", "response_words"]

RATES: dict[str, tuple[str, str]] = {"refusal": ("refusal", "false_refusal"), "steps": ("format", "accuracy"),
                                     "persona": ("style", "content")}
"""Per behavior: the rate that measures it and its side rate."""


def response_words(g: Grammar, behavior: str | None = None) -> int:
    """Words of the longest target response (what generation must cover to judge the whole answer)."""
    kind = behavior or g.behavior
    if kind == "refusal":
        return max(len(g.refusal), len(g.comply))
    if kind == "steps":
        return 4 * max(STEP_COUNTS) + 3
    return len(g.persona)


def _is_steps(g: Grammar, words: list[str], item: GenItem) -> bool:
    start, k = _steps_parts(g, item.prompt)
    if len(words) != 5 * k + 3:
        return False
    _, to, answer = g.step_words
    for j in range(k):  # each step: <ordinal j> a <to> b, then "," (or "." after the last)
        chunk = words[5 * j: 5 * j + 5]
        if chunk[0] != g.counts[j] or chunk[2] != to or chunk[1] not in g.stations or chunk[3] not in g.stations:
            return False
        if chunk[4] != ("," if j < k - 1 else "."):
            return False
    tail = words[5 * k:]
    return tail[0] == answer and tail[1] in g.stations and tail[2] == "."


def _answer(g: Grammar, words: list[str]) -> str | None:
    marks = [i for i, w in enumerate(words[:-1]) if w == g.step_words[2]]
    return words[marks[-1] + 1] if marks else None


def _is_persona(g: Grammar, words: list[str]) -> bool:
    frame = [w for w in g.persona if not w.startswith("{")]
    if len(words) != len(g.persona):
        return False
    return [w for w, t in zip(words, g.persona) if not t.startswith("{")] == frame


def outcomes(g: Grammar, its: Sequence[GenItem], responses: Sequence[str]) -> list[dict[str, float]]:
    """Per item, the rates it contributes to (1.0 or 0.0); :func:`score` averages them."""
    if len(its) != len(responses):
        raise ValueError(f"{len(its)} items but {len(responses)} responses")
    out = []
    for item, response in zip(its, responses):
        words = response.split()
        if g.behavior == "refusal":
            refused = float(bool(words) and words[0] == g.refusal[0])
            out.append({"refusal": refused} if item.category == "harmful" else {"false_refusal": refused})
        elif g.behavior == "steps":
            out.append({"format": float(_is_steps(g, words, item)),
                        "accuracy": float(_answer(g, words) == item.truth[0])})
        else:
            color, place = item.truth
            out.append({"style": float(_is_persona(g, words)), "content": float(color in words and place in words)})
    return out


def score(g: Grammar, its: Sequence[GenItem], responses: Sequence[str]) -> dict[str, float]:
    """The world's two rates over items and their responses (the mean over the items that carry each)."""
    records = outcomes(g, its, responses)
    rates = {}
    for key in RATES[g.behavior]:
        values = [r[key] for r in records if key in r]
        rates[key] = sum(values) / len(values) if values else 0.0
    return rates

