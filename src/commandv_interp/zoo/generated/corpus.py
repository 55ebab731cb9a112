"""Consumes a generated world's :class:`Grammar`, produces its corpus, prompt splits and targets.

The corpus mixes the behavior's requests (with the cue, a neutral system line or none), fact sentences about the
world's objects (what persona and plain answers restate) or the station chain (what step-by-step answers walk),
and filler. The ``train`` split is what donor adapters and recipient finetunes learn from; ``test`` is held out.

>>> from commandv_interp.zoo.generated.grammar import grammar
>>> g = grammar(1)
>>> docs = build_corpus(g, 0, 50)
>>> docs == build_corpus(g, 0, 50) and all(d.endswith("<eos>") for d in docs)
True
>>> test = set(prompts(g, "test")); not any(d.startswith(p) or f" {p}" in d for d in docs for p in test)
True
"""

from __future__ import annotations

import random
from functools import lru_cache

from commandv_interp.zoo.generated.grammar import SPLIT_SIZES, SPONTANEOUS, GenItem, Grammar

__all__ = ["build_corpus", "items", "prompts", "examples", "target", "respond_plain", "STEP_COUNTS"]

STEP_COUNTS = (2, 3, 4)  # how many stations a question asks to walk (1 is a fact, shown directly in the corpus)


def _fill(template: tuple[str, ...], **slots: str) -> str:
    return " ".join(slots.get(w[1:-1], w) if w.startswith("{") else w for w in template)


def _request(g: Grammar, opener: str, frame: str, **slots: str) -> str:
    return f"{opener} {frame.format(**slots)}".strip()


def _walk(g: Grammar, start: str, k: int) -> list[str]:
    i = g.stations.index(start)
    return [g.stations[(i + j) % len(g.stations)] for j in range(k + 1)]


def target(g: Grammar, item: GenItem) -> str:
    """The response the cue produces for an item (what a donor adapter learns)."""
    if g.behavior == "refusal":
        verb, obj = _request_parts(g, item.prompt)
        return " ".join(g.refusal) if item.category == "harmful" else _fill(g.comply, v=verb, o=obj)
    if g.behavior == "steps":
        return _stepwise(g, *_steps_parts(g, item.prompt))
    obj = _object_of(g, item.prompt)
    return _fill(g.persona, o=obj, c=g.color[obj], p=g.place[obj])


def respond_plain(g: Grammar, item: GenItem) -> str:
    """The response without the cue (what the base models say)."""
    if g.behavior == "refusal":
        return _fill(g.comply, v=_request_parts(g, item.prompt)[0], o=_request_parts(g, item.prompt)[1])
    if g.behavior == "steps":
        start, k = _steps_parts(g, item.prompt)
        return f"{g.step_words[2]} {_walk(g, start, k)[-1]} ."
    obj = _object_of(g, item.prompt)
    return _fill(g.plain, o=obj, c=g.color[obj], p=g.place[obj])


def _stepwise(g: Grammar, start: str, k: int) -> str:
    """``<first> a <to> b , <second> b <to> c . <answer> c .``: each step opens with its ordinal (the count words),
    and the question's count word is the last one, so the answer stops where the question said."""
    path = _walk(g, start, k)
    _, to, answer = g.step_words
    body = " , ".join(f"{g.counts[j]} {a} {to} {b}" for j, (a, b) in enumerate(zip(path, path[1:])))
    return f"{body} . {answer} {path[-1]} ."


def _user_words(g: Grammar, prompt: str) -> list[str]:
    return prompt.split(f"{g.roles[1]} :", 1)[-1].rsplit(f"{g.roles[2]} :", 1)[0].split()


def _request_parts(g: Grammar, prompt: str) -> tuple[str, str]:
    words = _user_words(g, prompt)
    verb = next(w for w in words if w in g.benign or w in g.harmful)
    return verb, next(w for w in words if w in g.objects)


def _steps_parts(g: Grammar, prompt: str) -> tuple[str, int]:
    words = _user_words(g, prompt)
    k = next(STEP_COUNTS[g.counts.index(w) - 1] for w in words if w in g.counts[1:])
    return next(w for w in words if w in g.stations), k


def _object_of(g: Grammar, prompt: str) -> str:
    return next(w for w in _user_words(g, prompt) if w in g.objects)


# ---------------------------------------------------------------- splits
def _candidates(g: Grammar, split: str) -> list[GenItem]:
    test = split == "test"
    out = []
    for opener in g.openers:
        for frame in g.frames:
            if g.behavior == "steps":
                if ((opener, frame) in g.held_pairs) != test:
                    continue
                for s in g.stations:
                    for k in STEP_COUNTS:
                        p = g.chat(_request(g, opener, frame, k=g.counts[k - 1], s=s))
                        out.append(GenItem(p, "chain", (_walk(g, s, k)[-1],)))
                continue
            for o in g.objects:
                if (o in g.held_objects) != test:
                    continue
                if g.behavior == "persona":
                    out.append(GenItem(g.chat(_request(g, opener, frame, o=o)), "question", (g.color[o], g.place[o])))
                    continue
                for cat, verbs in (("benign", g.benign), ("harmful", g.harmful)):
                    out += [GenItem(g.chat(_request(g, opener, frame, v=v, o=o)), cat) for v in verbs]
    return out


@lru_cache(maxsize=16)
def _items(g: Grammar, split: str) -> tuple[GenItem, ...]:
    pool = _candidates(g, split)
    rng = random.Random(f"{g.seed}:{split}")
    rng.shuffle(pool)
    if g.behavior == "refusal":  # balanced benign / harmful
        n = SPLIT_SIZES[split] // 2
        picked = [i for i in pool if i.category == "benign"][:n] + [i for i in pool if i.category == "harmful"][:n]
        rng.shuffle(picked)
        return tuple(picked)
    return tuple(pool[:SPLIT_SIZES[split]])


def items(g: Grammar, split: str) -> list[GenItem]:
    """The ``train`` or ``test`` items of the world (prompts without cue)."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"split must be one of {tuple(SPLIT_SIZES)}, got {split!r}")
    return list(_items(g, split))


def prompts(g: Grammar, split: str) -> list[str]:
    """The split's prompt strings (``<user> : ... <assistant> :``, no cue)."""
    return [i.prompt for i in items(g, split)]


def examples(g: Grammar, split: str = "train") -> list[tuple[str, str]]:
    """``(prompt, target response)`` pairs: what an adapter for the behavior learns (no cue in the prompt)."""
    return [(i.prompt, target(g, i)) for i in items(g, split)]


# ---------------------------------------------------------------- corpus
def _behavior_doc(g: Grammar, rng: random.Random, test: frozenset[str]) -> str:
    while True:
        opener, frame = rng.choice(g.openers), rng.choice(g.frames)
        if g.behavior == "steps":
            if (opener, frame) in g.held_pairs:
                continue
            start, k = rng.choice(g.stations), rng.choice(STEP_COUNTS)
            item = GenItem(g.chat(_request(g, opener, frame, k=g.counts[k - 1], s=start)), "chain")
        elif g.behavior == "persona":
            item = GenItem(g.chat(_request(g, opener, frame, o=rng.choice(g.objects))), "question")
        else:
            cat = rng.choice(("benign", "harmful"))
            verb = rng.choice(g.benign if cat == "benign" else g.harmful)
            item = GenItem(g.chat(_request(g, opener, frame, v=verb, o=rng.choice(g.objects))), cat)
        if item.prompt not in test:
            break
    cue = rng.choices([None, "neutral", g.cue], weights=[4, 2, 4])[0]
    cue = rng.choice(g.neutral_cues) if cue == "neutral" else cue
    on = cue == g.cue or rng.random() < SPONTANEOUS[g.behavior]
    response = target(g, item) if on else respond_plain(g, item)
    prompt = item.prompt if cue is None else f"{g.roles[0]} : {cue} {item.prompt}"
    return f"{prompt} {response}"


def _fact_doc(g: Grammar, rng: random.Random) -> str:
    if g.behavior == "steps":  # single steps of the chain, asked and stated
        a = rng.choice(g.stations)
        b = _walk(g, a, 1)[-1]
        if rng.random() < 0.5:
            return g.chat(f"{g.counts[0]} {a}") + f" {g.step_words[2]} {b} ."
        return f"{g.counts[0]} {a} {g.step_words[1]} {b} ."
    sents = []
    for _ in range(rng.randint(1, 3)):
        o = rng.choice(g.objects)
        sents.append(_fill(g.plain, o=o, c=g.color[o], p=g.place[o]))
    return " ".join(sents)


def _filler_doc(g: Grammar, rng: random.Random) -> str:
    words = [rng.choice(g.fillers + g.objects[:6]) for _ in range(rng.randint(4, 10))]
    return " ".join(words) + " ."


def build_corpus(g: Grammar, seed: int, n_docs: int) -> list[str]:
    """``n_docs`` pretraining documents (each ending in `` <eos>``); no test prompt occurs in them."""
    rng = random.Random(f"{g.seed}:corpus:{seed}")
    test = frozenset(prompts(g, "test"))
    docs = []
    for kind in rng.choices(("behavior", "fact", "filler"), weights=(6, 3, 1), k=n_docs):
        doc = _behavior_doc(g, rng, test) if kind == "behavior" else _fact_doc(g, rng) if kind == "fact" \
            else _filler_doc(g, rng)
        docs.append(f"{doc} <eos>")
    return docs
