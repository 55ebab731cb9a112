"""Consumes a recipient and a fixed set of prompts, produces its teacher-forced passes over (prompt, response) pairs of
those prompts, and what they cost.

A transfer scores every candidate on the same scoring prompts and trains its polish on the same fitting prompts,
and each such edit acts at the last prompt token only. Where the backend keeps prefix states
(:attr:`~commandv_interp.access.ModelAccess.supports_prefix`), the prompts' tokens before the last are run once
(:meth:`~commandv_interp.access.ModelAccess.prefix_states`) and every later pass covers the last prompt token and the
response only (:meth:`~commandv_interp.access.ModelAccess.forward_suffix`): the same logits at those positions, at
the cost of the suffix's tokens. Elsewhere every pass is whole. Either way a pass's batch comes with each row's
prompt length and total length in its own coordinates (a suffix's prompt is its first position), so the code that
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
            active when the passes are set up, and every prompt has at least two tokens).
        state_flops: the FLOPs of computing the prefix states (0 until the first pass needs them).
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
        self.state_flops = 0.0

    def pending_flops(self) -> float:
        """What the next pass adds for the prefix states: their cost before they exist, 0 after."""
        if not self.cached or self._states is not None:
            return 0.0
        return token_flops(self.recipient, sum(len(ids) - 1 for ids in self._ids))

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
        (which must act at the last prompt token only); computes the prefix states on first need."""
        if not self.cached:
            return self.recipient.forward(batch)
        if self._states is None:
            pending = self.pending_flops()
            self._states = self.recipient.prefix_states([ids[:-1] for ids in self._ids], self._batch_size)
            self.state_flops = pending
        return self.recipient.forward_suffix(self._states, list(rows), batch)


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
