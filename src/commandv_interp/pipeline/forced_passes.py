"""Consumes a recipient and a fixed set of prompts, produces its teacher-forced passes over (prompt, response) pairs of
those prompts, and what they cost.

A transfer scores every candidate on the same scoring prompts and trains its polish on the same fitting prompts,
and each such edit acts at the last prompt token only. Where the backend keeps prefix states
(:attr:`~commandv_interp.access.ModelAccess.supports_prefix`), the prompts' tokens before the last are run once
(:meth:`~commandv_interp.access.ModelAccess.prefix_states`) and every later pass covers the last prompt token and the
response only (:meth:`~commandv_interp.access.ModelAccess.forward_suffix`): the same logits at those positions, at
the cost of the suffix's tokens. Under edits from block ``L`` up, such a pass also starts from ``L``'s output over
the suffix, taken once per row from a pass with no edit (:meth:`~commandv_interp.access.ModelAccess.hidden_suffix`):
the blocks up to ``L`` are the same under every edit, so only those above run. Elsewhere every pass is whole.
Either way a pass's batch comes with each row's prompt length and total length in its own coordinates (a suffix's
prompt is its first position), so the code that
reads the logits (:func:`~commandv_interp.pipeline.agreement.at_prompt_end`,
:func:`~commandv_interp.pipeline.agreement.answer_labels`) is the same for both.
"""

from __future__ import annotations

from collections.abc import Sequence

from commandv_interp.access import Batch, ModelAccess, token_flops
from commandv_interp.types import Float, Tensor

__all__ = ["ForcedPasses", "response_sequences"]


class ForcedPasses:
    """Teacher-forced passes of ``recipient`` over responses to ``prompts`` (rows index the prompts).

    ``cache=False`` runs every pass whole (what one-off scorings do: the prefix states pay off over many passes).

    Attributes:
        cached: whether passes start from the prompts' prefix states (``cache``, the backend keeps them, no edit is
            active when the passes are set up, and every prompt has at least two tokens), and under edits from the
            lowest edited block's output.
        state_flops: the FLOPs of the states computed for the passes: the prefix states (on the first pass) and
            each row's start states (on the first pass that needs them).
        pass_flops: the FLOPs of the passes themselves (forward), so far.
    """

    def __init__(self, recipient: ModelAccess, prompts: Sequence[str], batch_size: int = 32,
                 cache: bool = True) -> None:
        self.recipient = recipient
        self.prompts = tuple(prompts)
        self._ids = [list(ids) for ids in recipient.tokenizer(list(self.prompts))["input_ids"]] if self.prompts else []
        # an edit active now (the caller's, around the transfer) could act before the last prompt token, where the
        # prefix states would miss it: then every pass is whole
        self.cached = bool(cache and recipient.supports_prefix and not recipient.active_edits
                           and all(len(ids) >= 2 for ids in self._ids))
        self._batch_size = batch_size
        self._states = None
        self._starts: dict[tuple[int, int, tuple[int, ...]], Tensor] = {}  # (block, row, suffix ids) → its output
        self._token_costs: dict[int | None, float] = {}
        self.state_flops = 0.0
        self.pass_flops = 0.0

    def pending_flops(self) -> float:
        """What the next pass adds for the prefix states: their cost before they exist, 0 after."""
        if not self.cached or self._states is not None:
            return 0.0
        return token_flops(self.recipient, sum(len(ids) - 1 for ids in self._ids))

    def token_cost(self, layer: int | None) -> float:
        """The FLOPs per token of a pass under edits from block ``layer`` up (``None``: no edit)."""
        key = layer if self.cached else None
        if key not in self._token_costs:  # a parameter count per block: counted once, read on every pass
            self._token_costs[key] = token_flops(self.recipient, 1, after_layer=key)
        return self._token_costs[key]

    def costs(self, rows: Sequence[int], batch: Batch, layer: int | None) -> tuple[float, float]:
        """What :meth:`logits` over ``batch`` (its ``rows``) under edits from block ``layer`` up adds: the FLOPs of
        the states it computes first (prefix states, start states) and those of the pass itself."""
        return self._costs(batch, layer, self._start_keys(rows, batch, layer))

    def _costs(self, batch: Batch, layer: int | None, keys: list | None) -> tuple[float, float]:
        pass_cost = self.token_cost(layer) * int(batch.attention_mask.sum())
        if keys is None:
            return self.pending_flops(), pass_cost
        todo = sum(len(keys[i][2]) for i in self._missing(keys).values())
        return self.pending_flops() + token_flops(self.recipient, todo, through_layer=layer), pass_cost

    def sequences(self, rows: Sequence[int], responses: Sequence[str]) -> tuple[Batch, list[int], list[int]]:
        """The right-padded ids of each ``prompts[rows[i]] + " " + responses[i]`` (from its last prompt token on when
        :attr:`cached`), each row's prompt length and total length in those coordinates (see :func:`response_sequences`)."""
        rows = list(rows)
        ids, prompt_lens = _response_ids(self.recipient, [self.prompts[r] for r in rows], responses)
        if self.cached:
            ids, prompt_lens = [r[p - 1:] for r, p in zip(ids, prompt_lens)], [1] * len(ids)
        return _right_padded(ids, self.recipient.tokenizer), prompt_lens, [len(r) for r in ids]

    def logits(self, rows: Sequence[int], batch: Batch) -> Float[Tensor, "batch pos vocab"]:
        """Logits of a pass over ``batch`` (from :meth:`sequences` with the same ``rows``), with the active edits
        (which must act at the last prompt token only); computes the states it needs on first need."""
        rows = list(rows)
        layer = min(self.recipient.active_edits, default=None)
        keys = self._start_keys(rows, batch, layer)
        before, cost = self._costs(batch, layer, keys)
        if not self.cached:
            out = self.recipient.forward(batch)
        else:
            if self._states is None:
                self._states = self.recipient.prefix_states([ids[:-1] for ids in self._ids], self._batch_size)
            start = None if keys is None else (layer, self._start_states(keys, rows, batch, layer))
            out = self.recipient.forward_suffix(self._states, rows, batch, start=start)
        self.state_flops += before
        self.pass_flops += cost
        return out

    def _start_keys(self, rows: Sequence[int], batch: Batch, layer: int | None
                    ) -> list[tuple[int, int, tuple[int, ...]]] | None:
        """Per row, the key of its start states, ``(block, row, suffix ids)``; None when the pass starts at the
        first block (no edit, or whole passes)."""
        if not self.cached or layer is None:
            return None
        lengths = batch.attention_mask.sum(1).tolist()
        return [(layer, row, tuple(batch.input_ids[i, :n].tolist())) for i, (row, n) in enumerate(zip(rows, lengths))]

    def _missing(self, keys: list) -> dict[tuple, int]:
        """The keys whose start states are not taken yet, each with its first row (a row drawn twice is run once)."""
        first_seen: dict[tuple, int] = {}
        for i, key in enumerate(keys):
            if key not in self._starts:
                first_seen.setdefault(key, i)
        return first_seen

    def _start_states(self, keys: list, rows: list[int], batch: Batch, layer: int) -> Tensor:
        """Block ``layer``'s output over ``batch`` with no edit (zeros at padding), each row's taken once."""
        todo = list(self._missing(keys).values())
        if todo:
            part = _right_padded([list(keys[i][2]) for i in todo], self.recipient.tokenizer)
            hidden = self.recipient.hidden_suffix(self._states, [rows[i] for i in todo], part, layer)
            for j, i in enumerate(todo):
                self._starts[keys[i]] = hidden[j, :len(keys[i][2])].clone()
        first = self._starts[keys[0]]
        out = first.new_zeros((len(keys), batch.input_ids.shape[1], first.shape[-1]))
        for i, key in enumerate(keys):
            out[i, :len(key[2])] = self._starts[key]
        return out


def response_sequences(access: ModelAccess, prompts: Sequence[str], responses: Sequence[str]
                       ) -> tuple[Batch, list[int], list[int]]:
    """Right-padded ``prompt + " " + response`` ids, each row's prompt length and total length (recipient's tokens)."""
    ids, prompt_lens = _response_ids(access, prompts, responses)
    return _right_padded(ids, access.tokenizer), prompt_lens, [len(r) for r in ids]


def _response_ids(access: ModelAccess, prompts: Sequence[str], responses: Sequence[str]
                  ) -> tuple[list[list[int]], list[int]]:
    """Each ``prompt + " " + response``'s ids (the prompt's own ids first) and each prompt's length."""
    tok = access.tokenizer
    rows, prompt_lens = [], []
    for prompt, response in zip(prompts, responses):
        p_ids = tok(prompt)["input_ids"]
        f_ids = tok(prompt + " " + response)["input_ids"]
        if f_ids[:len(p_ids)] != p_ids:  # the response merged with the prompt's last token: fall back to concatenation
            f_ids = p_ids + tok(" " + response, add_special_tokens=False)["input_ids"]
        rows.append(list(f_ids))
        prompt_lens.append(len(p_ids))
    return rows, prompt_lens


def _right_padded(rows: Sequence[Sequence[int]], tokenizer) -> Batch:
    return Batch.right_padded(rows, tokenizer.pad_token_id)
