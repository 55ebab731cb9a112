"""Consumes a generated world's grammar, a model and items, produces the rates of the model's greedy responses
(under its active edits): what the build-time check and a built world's behavior table both measure."""

from __future__ import annotations

from collections.abc import Sequence

from commandv_interp.access import ModelAccess
from commandv_interp.zoo.evaluate import respond
from commandv_interp.zoo.generated.corpus import examples
from commandv_interp.zoo.generated.grammar import GenItem, Grammar
from commandv_interp.zoo.generated.judge import outcomes, score

__all__ = ["max_new_tokens", "item_outcomes", "item_rates"]


def max_new_tokens(g: Grammar, model: ModelAccess) -> int:
    """Tokens that cover the longest target response on this model's tokenizer (the whole answer) plus EOS."""
    tok = model.tokenizer
    return max(len(tok(" " + r, add_special_tokens=False)["input_ids"]) for _, r in examples(g)) + 2


def _responses(g: Grammar, model: ModelAccess, its: Sequence[GenItem], cue: bool) -> list[str]:
    prompts = [g.with_cue(i.prompt) if cue else i.prompt for i in its]
    return respond(model, prompts, max_new_tokens(g, model))


def item_outcomes(g: Grammar, model: ModelAccess, its: Sequence[GenItem], cue: bool = False
                  ) -> list[dict[str, float]]:
    """Per item, the rates its greedy response contributes to (the cue word prepended with ``cue``)."""
    return outcomes(g, its, _responses(g, model, its, cue))


def item_rates(g: Grammar, model: ModelAccess, its: Sequence[GenItem], cue: bool = False) -> dict[str, float]:
    """The behavior's two rates over ``its`` (the cue word prepended with ``cue``)."""
    return score(g, its, _responses(g, model, its, cue))
