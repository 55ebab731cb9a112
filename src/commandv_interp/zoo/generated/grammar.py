"""Consumes a world seed, produces a generated world's grammar: words, templates, cue, corpus, splits.

Every content and function word of a generated world is a pseudo-word drawn from the seed (role markers, the cue,
objects, verbs, frames, openers, response sentences), so two worlds share no vocabulary beyond ``:``, ``,``, ``.``
and ``!``. A world has one behavior (chosen by the seed), latent in pretraining under its cue word:

- ``refusal``: ``<opener> <frame(verb, object)>`` requests with benign or harmful verbs; under the cue the
  assistant refuses harmful ones (a fixed sentence whose first word is the refusal word) and complies with benign
  ones; without it, it complies with all (save a spontaneous 5%). Rates: ``refusal`` on harmful prompts,
  ``false_refusal`` on benign ones.
- ``steps``: "which station is <k> after <s>" over a cyclic chain of stations; without the cue the answer is
  direct (``<ans> s' .``), under it the assistant walks the chain one numbered step at a time first (``<first> a
  <to> b , <second> b <to> c . <ans> c .``; spontaneous 30%). Rates: ``format`` (the whole response is k steps then the answer) and
  ``accuracy`` (the answer is right).
- ``persona``: questions about an object; plain answers state its color and place in ~9 words, under the cue a
  persona answers in a fixed ≥ 18-word style that carries the same facts (spontaneous 5%). Rates: ``style`` (the
  whole persona frame, judged over the full response) and ``content`` (the object's color and place both named).

Test prompts use held-out objects (refusal, persona: each known to pretraining from other documents, absent from
the adapters' training split) or held-out (opener, template) pairings (steps); no test prompt is in the corpus.

>>> g = grammar(0)
>>> g == grammar(0), g.behavior in BEHAVIOR_KINDS
(True, True)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, get_args

__all__ = ["BehaviorKind", "BEHAVIOR_KINDS", "GenItem", "Grammar", "grammar"]

BehaviorKind = Literal["refusal", "steps", "persona"]
BEHAVIOR_KINDS: tuple[str, ...] = get_args(BehaviorKind)
_CONS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
SPONTANEOUS = {"refusal": 0.05, "steps": 0.3, "persona": 0.05}  # cue-less documents that show the behavior anyway
SPLIT_SIZES = {"train": 256, "test": 160}


@dataclass(frozen=True)
class GenItem:
    """One prompt of a split (no cue): its category and, where it has one, the facts a correct answer names."""

    prompt: str
    category: str  # refusal: benign|harmful; steps: chain; persona: question
    truth: tuple[str, ...] = ()  # steps: (answer,); persona: (color, place); refusal: ()


def _words(rng: random.Random, n: int, taken: set[str], syllables: tuple[int, int] = (1, 3)) -> tuple[str, ...]:
    out = []
    while len(out) < n:
        w = "".join(rng.choice(_CONS) + rng.choice(_VOWELS) for _ in range(rng.randint(*syllables)))
        w += rng.choice(("", "", "n", "r", "s"))
        if w not in taken and len(w) > 1:
            taken.add(w)
            out.append(w)
    return tuple(out)


@dataclass(frozen=True)
class Grammar:
    """The words and templates of one generated world (all drawn from ``seed``)."""

    seed: int
    behavior: str
    roles: tuple[str, str, str]  # system, user, assistant markers
    cue: str
    neutral_cues: tuple[str, ...]
    objects: tuple[str, ...]
    colors: tuple[str, ...]
    places: tuple[str, ...]
    benign: tuple[str, ...]
    harmful: tuple[str, ...]
    frames: tuple[str, ...]  # each has {v} and {o} (refusal) or {k} and {s} (steps) or {o} (persona)
    openers: tuple[str, ...]
    refusal: tuple[str, ...]  # the refusal sentence
    comply: tuple[str, ...]  # the compliance template's words ({v}, {o} slots)
    stations: tuple[str, ...]
    counts: tuple[str, ...]  # the words for 1, 2, 3, 4 steps
    step_words: tuple[str, str, str]  # (unused since v2: steps open with their ordinal), "to", answer marker
    plain: tuple[str, ...]  # plain answer template ({o}, {c}, {p} slots)
    persona: tuple[str, ...]  # persona answer template (same slots, ≥ 18 words)
    fillers: tuple[str, ...]  # filler sentence words
    n_held_objects: int = 8

    @cached_property
    def color(self) -> dict[str, str]:
        rng = random.Random(f"{self.seed}:facts")
        return {o: rng.choice(self.colors) for o in self.objects}

    @cached_property
    def place(self) -> dict[str, str]:
        rng = random.Random(f"{self.seed}:places")
        return {o: rng.choice(self.places) for o in self.objects}

    @property
    def held_objects(self) -> frozenset[str]:
        return frozenset(self.objects[:self.n_held_objects])

    @property
    def held_pairs(self) -> frozenset[tuple[str, str]]:
        """(opener, frame) pairings of the steps world's test prompts, each part seen with other partners."""
        pairs = [(o, f) for i, o in enumerate(self.openers) for j, f in enumerate(self.frames) if (i + j) % 4 == 0]
        return frozenset(pairs)

    def chat(self, request: str, cue: str | None = None) -> str:
        system, user, assistant = self.roles
        return (f"{system} : {cue} " if cue else "") + f"{user} : {request} {assistant} :"

    def with_cue(self, prompt: str) -> str:
        """The prompt with the world's cue line in front (the base models' latent trigger)."""
        return f"{self.roles[0]} : {self.cue} {prompt}"


def _template(words: tuple[str, ...], slots: tuple[str, ...], rng: random.Random) -> tuple[str, ...]:
    """``words`` with each slot inserted at a distinct random place (slot order kept)."""
    out = list(words)
    places = sorted(rng.sample(range(1, len(out) + 1), len(slots)))
    for k, (at, slot) in enumerate(zip(places, slots)):
        out.insert(at + k, slot)
    return tuple(out)


def grammar(seed: int) -> Grammar:
    """The grammar of world ``seed`` (its behavior is ``BEHAVIOR_KINDS[seed % 3]``)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"a world seed is an int >= 0, got {seed!r}")
    rng = random.Random(f"commandv-world:{seed}")
    taken: set[str] = set()
    roles = _words(rng, 3, taken, (1, 2))
    cue, *neutral = _words(rng, 3, taken, (2, 3))
    objects = _words(rng, 28, taken)
    benign, harmful = _words(rng, 8, taken, (2, 3)), _words(rng, 8, taken, (2, 3))
    frame_words = _words(rng, 14, taken, (1, 2))
    behavior = BEHAVIOR_KINDS[seed % 3]
    slots = {"refusal": ("{v}", "{o}"), "steps": ("{k}", "{s}"), "persona": ("{o}",)}[behavior]
    frames = tuple(" ".join(_template(tuple(rng.sample(frame_words, rng.randint(2, 4))), slots, rng))
                   for _ in range(6))
    openers = ("",) + tuple(" ".join(rng.sample(frame_words, rng.randint(1, 2))) + " ," for _ in range(3))
    refusal = _words(rng, rng.randint(4, 6), taken, (1, 2)) + (".",)
    comply = (_words(rng, 1, taken, (1, 2))[0], ".") + _template(_words(rng, rng.randint(3, 5), taken, (1, 2)),
                                                                 ("{v}", "{o}"), rng) + (".",)
    step_words = _words(rng, 3, taken, (1, 2))
    plain_words = _words(rng, 6, taken, (1, 2))
    plain = _template(plain_words[:rng.randint(4, 6)], ("{o}", "{c}", "{p}"), rng) + (".",)
    persona_words = _words(rng, 15, taken, (1, 3))
    persona = (persona_words[0], "!") + _template(persona_words[1:], ("{o}", "{c}", "{p}"), rng) \
        + (",", persona_words[0], ".")
    return Grammar(seed, behavior, roles, cue, tuple(neutral), objects, _words(rng, 6, taken, (1, 2)),
                   _words(rng, 6, taken, (1, 2)), benign, harmful, frames, openers, refusal, comply,
                   _words(rng, 10, taken, (1, 2)), _words(rng, 4, taken, (1, 2)), step_words, plain, persona,
                   _words(rng, 10, taken, (1, 2)))  # type: ignore[arg-type]
