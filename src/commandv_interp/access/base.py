"""Consumes a model object, produces a uniform reading/editing interface (its inputs:
:class:`~commandv_interp.access.batch.Batch`).

:class:`ModelAccess` is the one interface every later stage talks to. Backends (nnsight,
TransformerLens) subclass it and are the only code that knows hook names and execution order.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from commandv_interp.access.batch import Batch
from commandv_interp.access.prefix import PrefixStates
from commandv_interp.access.provenance import config_hash
from commandv_interp.types import Float, Int, Tensor

__all__ = ["Batch", "EditContext", "EditFn", "ModelAccess", "StopForward", "check_fits_context", "context_length"]


@dataclass(frozen=True)
class EditContext:
    """What an edit function knows about the forward pass it is editing.

    ``step`` is 0 on the prompt pass and ``k`` on the k-th decode step of a generation.
    ``prompt_mask`` is the attention mask of the prompt (batch × prompt positions).
    """

    layer: int
    step: int
    prompt_mask: Int[Tensor, "batch pos"]


EditFn = Callable[[Float[Tensor, "batch pos d_model"], EditContext], Float[Tensor, "batch pos d_model"]]
"""An edit maps a block's output hidden states to new hidden states (same shape).

Optional attributes: ``acts_on_decode`` (bool; False lets generation skip decode steps) and ``low_rank``
(a tuple of :class:`~commandv_interp.access.intrace.LowRankEdit` computing the same edit; what a remote
trace runs instead of the function)."""


class StopForward(Exception):
    """Raised inside a hook to stop a forward pass after the last layer a reader needs."""


class ModelAccess(ABC):
    """Uniform access to a causal LM's residual stream (block outputs).

    Attributes:
        backend: ``"nnsight"`` or ``"transformer_lens"``.
        name: model name (HF ``name_or_path`` or the given name).
        n_layers: number of transformer blocks.
        d_model: residual width.
        tokenizer: a Hugging Face tokenizer.
    """

    backend: str
    name: str
    n_layers: int
    d_model: int
    tokenizer: object

    def __init__(self) -> None:
        self._edits: dict[int, EditFn] = {}

    # -- identity ------------------------------------------------------------------------------
    @property
    @abstractmethod
    def hf_config(self) -> object:
        """The underlying Hugging Face config (used for fingerprints)."""

    @property
    @abstractmethod
    def torch_module(self) -> torch.nn.Module:
        """The module whose parameters are the model's weights (for freezing, device, dtype)."""

    @property
    def config_hash(self) -> str:
        """Short hash of the architecture config: the same model hashes alike on both backends and whatever its
        dtype, device or attention implementation; models of another shape do not (see
        :mod:`~commandv_interp.access.provenance`)."""
        return config_hash(self.hf_config)

    @property
    def device(self) -> torch.device:
        return next(self.torch_module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.torch_module.parameters()).dtype

    @abstractmethod
    def hook_point(self, layer: int) -> str:
        """The backend's name for block ``layer``'s output (a TransformerLens hook point or an nnsight module path)."""

    @abstractmethod
    def block_device(self, layer: int) -> torch.device:
        """Device of block ``layer``'s parameters (models may be spread over devices)."""

    # -- tokens --------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str], padding_side: str = "left", chat_template: object = None) -> Batch:
        """Tokenize prompts into a padded :class:`Batch` (``padding_side`` "left" or "right"; ``chat_template`` as in
        :func:`~commandv_interp.access.chat.format_prompts`: ``True`` uses the tokenizer's chat template)."""
        if isinstance(prompts, str):
            raise ValueError("encode() takes a list of prompts, got a single string; wrap it in a list")
        if len(prompts) == 0:
            raise ValueError("encode() needs at least one prompt, got an empty list")
        if chat_template is not None:
            from commandv_interp.access.chat import format_prompts  # a sibling module of the same stage

            prompts = format_prompts(self.tokenizer, prompts, chat_template)
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        tok = self.tokenizer
        if tok.pad_token is None:
            raise ValueError(f"tokenizer of {self.name!r} has no pad token; set tokenizer.pad_token first")
        old_side = tok.padding_side
        tok.padding_side = padding_side
        try:
            enc = tok(list(prompts), return_tensors="pt", padding=True)
        finally:
            tok.padding_side = old_side
        return Batch(enc["input_ids"], enc["attention_mask"])

    def _check_layers(self, layers: Sequence[int]) -> list[int]:
        out = sorted(set(int(layer) for layer in layers))
        bad = [layer for layer in out if not 0 <= layer < self.n_layers]
        if bad:
            raise ValueError(f"layers {bad!r} out of range for {self.name!r} with n_layers={self.n_layers}")
        return out

    # -- reading -------------------------------------------------------------------------------
    def read(
        self, batch: Batch, layers: Sequence[int], positions: str = "last", remote: bool | str = False,
    ) -> dict[int, Tensor]:
        """Block outputs (residual stream after block ``l``), detached, float32, on CPU.

        Args:
            batch: the padded prompts.
            layers: 0-based block indices.
            positions: ``"last"`` → ``batch × d_model`` at each row's last prompt token;
                ``"all"`` → ``batch × pos × d_model``.
            remote: nnsight's ``remote``: ``True`` runs on NDIF, ``"local"`` simulates that here (see
                :meth:`read_batches`).

        Returns:
            dict layer → tensor. Active edits (inside :meth:`edited`) are applied.
        """
        if positions not in ("last", "all"):
            raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")
        if remote:
            return self.read_batches([batch], layers, positions, remote=remote)[0]
        layers = self._check_layers(layers)
        with torch.no_grad():
            blocks = self._read_blocks(batch, layers, positions)
        return {layer: blocks[layer].detach().to(device="cpu", dtype=torch.float32) for layer in layers}

    def read_batches(
        self, batches: Sequence[Batch], layers: Sequence[int], positions: str = "last", remote: bool | str = False,
        progress: bool = False,
    ) -> list[dict[int, Tensor]]:
        """:meth:`read` over many batches. Remotely (nnsight backend only) all batches share one nnsight
        ``session``, i.e. one request, and only the selected vectors come back (detached, float32, on CPU).
        """
        if positions not in ("last", "all"):
            raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")
        layers = self._check_layers(layers)
        if remote:
            self._check_remote(remote)
            with torch.no_grad():
                return self._read_remote(list(batches), layers, positions, remote)
        return [self.read(b, layers, positions) for b in tqdm(batches, desc=f"read {self.name}",
                                                             disable=not progress or len(batches) < 2)]

    @abstractmethod
    def _read_blocks(self, batch: Batch, layers: list[int], positions: str) -> dict[int, Tensor]:
        """Block outputs at ``layers`` (sorted), with the active edits applied, as :meth:`read` returns them but
        in any dtype and on any device.

        The contract that keeps a read cheap: with ``positions="last"`` each layer's ``batch × d_model`` rows are
        gathered inside the forward pass (in the hook or trace), so no ``batch × pos × d_model`` tensor outlives the
        block that made it; the forward stops right after block ``max(layers)`` (no later block, final norm or
        head runs); no KV cache is built; and nothing of the pass is left in a reference cycle (it is freed when the
        call returns, without waiting for the cyclic garbage collector). ``positions="all"`` keeps the full
        sequence of the requested layers only.
        """

    # -- remote execution (nnsight) ------------------------------------------------------------
    supports_remote: bool = False

    def _check_remote(self, remote: bool | str) -> None:
        if not self.supports_remote:
            raise ValueError(f"remote={remote!r} needs the nnsight backend, but {self.name!r} is opened with the "
                             f"{self.backend} backend; open the Hugging Face model with open_model(hf_model, tokenizer)")
        if not (remote is True or isinstance(remote, str)):
            raise ValueError(f"remote must be False, True, 'local' or a server URL, got {remote!r}")

    def _read_remote(self, batches: list[Batch], layers: list[int], positions: str,
                     remote: bool | str) -> list[dict[int, Tensor]]:
        raise NotImplementedError

    def _forward_remote(self, batch: Batch, remote: bool | str) -> Tensor:
        raise NotImplementedError

    def _generate_ids_remote(self, batch: Batch, max_new_tokens: int, remote: bool | str) -> Tensor:
        raise NotImplementedError

    # -- running -------------------------------------------------------------------------------
    def forward(self, batch: Batch, remote: bool | str = False) -> Float[Tensor, "batch pos vocab"]:
        """Logits of one forward pass, with active edits applied (keeps grad if enabled, locally)."""
        if remote:
            self._check_remote(remote)
            with torch.no_grad():
                return self._forward_remote(batch, remote)
        return self._forward(batch)

    @abstractmethod
    def _forward(self, batch: Batch) -> Float[Tensor, "batch pos vocab"]:
        """Logits of one local forward pass, with active edits applied."""

    @abstractmethod
    def _generate_ids(self, batch: Batch, max_new_tokens: int) -> Int[Tensor, "batch new"]:
        """Greedy continuation ids (new tokens only, rows that stopped padded) of a left-padded batch, with active
        edits applied as in Hugging Face's cached ``generate``: ``step`` 0 on the prompt pass, ``k`` on the
        ``k``-th new token."""

    def generate(self, batch: Batch, max_new_tokens: int = 32, remote: bool | str = False) -> list[str]:
        """Greedy generation; returns the decoded continuation of each prompt (cut at EOS).

        Each row continues as it would alone, unpadded: a right-padded batch is left-padded first (new tokens
        follow the last prompt token), so edits see the left-padded prompt mask.

        ``remote`` as in :meth:`read`: the active edits run on the server (they must have a low-rank form,
        as every paste and adapter of the supported kinds has), and only the new token ids come back.
        """
        return self.decode_continuations(self.generate_ids(batch, max_new_tokens, remote))

    def generate_ids(self, batch: Batch, max_new_tokens: int = 32, remote: bool | str = False
                     ) -> Int[Tensor, "batch new"]:
        """The new token ids of :meth:`generate` (``max_new_tokens`` per row, EOS and what follows it included)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
        if remote:
            self._check_remote(remote)
        check_fits_context(self, batch, max_new_tokens)
        batch = batch.left_padded()
        with torch.no_grad():
            return (self._generate_ids_remote(batch, max_new_tokens, remote) if remote
                    else self._generate_ids(batch, max_new_tokens))

    # -- passes from cached prefixes -----------------------------------------------------------
    supports_prefix: bool = False
    """Whether :meth:`prefix_states`, :meth:`forward_suffix` and :meth:`read_suffix` run here (else callers run
    whole passes)."""

    def prefix_states(self, prefixes: Sequence[Sequence[int]], batch_size: int = 32,
                      through_layer: int | None = None) -> PrefixStates:
        """The key/value states of ``prefixes`` (token ids: prompts without their last token), from plain passes
        (no edit acts: see :mod:`~commandv_interp.access.prefix`); with ``through_layer`` the passes stop after
        that block and the states cover the blocks up to it."""
        raise NotImplementedError(f"the {self.backend} backend keeps no prefix states; run whole passes (forward)")

    def forward_suffix(self, states: PrefixStates, rows: Sequence[int], batch: Batch,
                       start: tuple[int, Tensor] | None = None) -> Float[Tensor, "batch pos vocab"]:
        """Logits of a pass over right-padded suffixes whose row ``i`` continues prompt ``rows[i]`` of ``states``:
        position 0 is that prompt's last token. The active edits apply with a one-position prompt mask, so an edit
        of the last prompt token acts at position 0; every active edit must act there only (the prefix states
        were taken without edits). Keeps grad if enabled. Equals :meth:`forward` over the whole sequences at the
        same positions, to float rounding.

        ``start=(layer, hidden)``, ``hidden`` from :meth:`hidden_suffix` over the same suffixes, starts the pass
        from block ``layer``'s output: only the blocks above it run (no active edit may act below it; one at
        ``layer`` acts on ``hidden``). See :func:`~commandv_interp.access.prefix.replayed_blocks`."""
        raise NotImplementedError(f"the {self.backend} backend keeps no prefix states; run whole passes (forward)")

    def hidden_suffix(self, states: PrefixStates, rows: Sequence[int], batch: Batch, layer: int
                      ) -> Float[Tensor, "batch pos d_model"]:
        """Block ``layer``'s output at every position of a pass over the suffixes as :meth:`forward_suffix` runs
        them, with no edit (the active ones do not apply), stopped after that block: where a pass under edits from
        ``layer`` up starts (``forward_suffix(..., start=(layer, hidden))``)."""
        raise NotImplementedError(f"the {self.backend} backend keeps no prefix states; run whole passes (forward)")

    def generate_suffix(self, states: PrefixStates, rows: Sequence[int], prompts: Sequence[Sequence[int]],
                        max_new_tokens: int) -> Int[Tensor, "batch new"]:
        """:meth:`generate_ids` of the token-id ``prompts`` whose prompt ``i`` continues (by its last token) prompt
        ``rows[i]`` of ``states``: the generation starts at the last prompt token. The active edits apply there
        only (with a one-position prompt mask), so each must act at the last prompt token and not on decode steps.
        The same new tokens as :meth:`generate_ids`, to float rounding."""
        raise NotImplementedError(f"the {self.backend} backend keeps no prefix states; generate whole prompts")

    def read_suffix(self, states: PrefixStates, rows: Sequence[int], batch: Batch, layers: Sequence[int]
                    ) -> dict[int, Tensor]:
        """Block outputs at each row's last suffix token (``batch × d_model``, detached, float32, on CPU) of a pass
        over right-padded suffixes continuing prompt ``rows[i]`` of ``states`` (which must cover ``max(layers)``):
        what :meth:`read` gives at the last token of the whole texts, to float rounding. The pass stops after the
        deepest layer. No edit may be active (the states were taken without them)."""
        raise NotImplementedError(f"the {self.backend} backend keeps no prefix states; run whole passes (read)")

    def decode_continuations(self, ids: Int[Tensor, "batch new"]) -> list[str]:
        eos = self.tokenizer.eos_token_id
        texts = []
        for row in ids.tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    # -- editing -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def edited(self, edits: Mapping[int, EditFn]) -> Iterator["ModelAccess"]:
        """Apply ``edits`` (layer → edit function) to every forward/generate inside the block.

        Edits compose with edits already active (inner edits run after outer ones at a layer).
        Everything is undone on exit, also on exceptions.
        """
        layers = self._check_layers(list(edits))
        previous = dict(self._edits)
        combined = dict(previous)
        for layer in layers:
            combined[layer] = _compose(previous.get(layer), edits[layer])
        self._edits = combined
        try:
            yield self
        finally:
            self._edits = previous

    @property
    def active_edits(self) -> dict[int, EditFn]:
        return dict(self._edits)


def _compose(first: EditFn | None, second: EditFn) -> EditFn:
    if first is None:
        return second

    def both(hidden: Tensor, ctx: EditContext) -> Tensor:
        return second(first(hidden, ctx), ctx)

    both.acts_on_decode = getattr(first, "acts_on_decode", True) or getattr(second, "acts_on_decode", True)
    forms = (getattr(first, "low_rank", None), getattr(second, "low_rank", None))
    both.low_rank = None if None in forms else forms[0] + forms[1]
    return both


# -- context limits (re-exported by :mod:`commandv_interp.access.limits`) ---------------------------------

_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def context_length(access: ModelAccess) -> int | None:
    """The model's number of positions from its Hugging Face config (``None`` if the config names none)."""
    cfg = access.hf_config
    for name in _FIELDS:
        value = getattr(cfg, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _preview(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[:width] + "...")


def check_fits_context(access: ModelAccess, prompts: Sequence[str] | Batch, new_tokens: int = 0) -> None:
    """Refuse prompts (or a padded batch) whose tokens plus ``new_tokens`` exceed the model's positions.

    Args:
        access: the model that will run them.
        prompts: the exact texts fed to the model, or the :class:`Batch` made from them (its padded width counts).
        new_tokens: tokens a generation will add after the prompt.

    Raises:
        ValueError: no prompts, a negative ``new_tokens``, or a prompt too long; the message names the longest
            prompt, its length and the limit.
    """
    if isinstance(prompts, str):
        raise ValueError("pass a list of prompts, not a single string; wrap it in a list")
    if not isinstance(new_tokens, int) or new_tokens < 0:
        raise ValueError(f"new_tokens must be an int >= 0, got {new_tokens!r}")
    if isinstance(prompts, Batch):
        lengths = prompts.attention_mask.sum(dim=1).tolist()
        width = int(prompts.input_ids.shape[1])
        if not lengths:
            raise ValueError("the batch holds no prompts; encode at least one")
        longest = max(range(len(lengths)), key=lambda i: lengths[i])
        name = f"row {longest} of the batch ({int(lengths[longest])} tokens, padded to {width})"
    else:
        texts = list(prompts)
        if not texts:
            raise ValueError("no prompts given; pass at least one")
        ids = access.tokenizer(texts)["input_ids"]
        lengths = [len(row) for row in ids]
        longest = max(range(len(lengths)), key=lambda i: lengths[i])
        width = lengths[longest]
        name = f"prompt {longest} {_preview(texts[longest])} ({width} tokens)"
    limit = context_length(access)
    if limit is None or width + new_tokens <= limit:
        return
    plus = f" + {new_tokens} new tokens = {width + new_tokens}" if new_tokens else ""
    raise ValueError(f"{name}{plus} exceeds the {limit} positions of {access.name!r}; shorten the prompts"
                     + (" or lower the new tokens (--max-new-tokens)" if new_tokens else ""))
