"""Consumes a TransformerLens ``TransformerBridge``, produces a :class:`ModelAccess`.

Uses the bridge's named hook points ``blocks.{l}.hook_out`` (alias ``hook_resid_post``): the
residual stream after block ``l``. Generation runs Hugging Face ``generate`` on the bridge-wrapped model (its
padding, position and stopping rules are kept and the hook points fire) without the KV cache: TransformerLens
4.3's reimplemented attention reads the cache only from ``past_key_values``/``layer_past``, which transformers 5.24
passes as ``cache``, so with the cache on every decode step would attend to itself alone. Each step therefore
re-runs the whole sequence, and :func:`_replaying_edit` applies the edits exactly as a cached run does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from commandv_interp.access.base import Batch, EditContext, EditFn, ModelAccess, StopForward
from commandv_interp.types import Float, Int, Tensor

__all__ = ["TransformerLensAccess", "hook_name"]


def hook_name(layer: int) -> str:
    """TransformerLens name of block ``layer``'s output."""
    return f"blocks.{layer}.hook_out"


class TransformerLensAccess(ModelAccess):
    """TransformerLens backend over a ``TransformerBridge``."""

    backend = "transformer_lens"

    def __init__(self, bridge: torch.nn.Module, name: str | None = None) -> None:
        super().__init__()
        self.bridge = bridge
        self.tokenizer = bridge.tokenizer
        if self.tokenizer is None:
            raise ValueError("the TransformerBridge has no tokenizer; boot it with tokenizer=...")
        self.n_layers = int(bridge.cfg.n_layers)
        self.d_model = int(bridge.cfg.d_model)
        hf = getattr(bridge, "original_model", None)
        self._hf = hf
        cfg_name = getattr(getattr(hf, "config", None), "name_or_path", "") if hf is not None else ""
        self.name = name or str(cfg_name or getattr(bridge.cfg, "model_name", "transformer_lens_model"))
        self._step = 0
        missing = [hook_name(l) for l in range(self.n_layers) if hook_name(l) not in bridge.hook_dict]
        if missing:
            raise ValueError(f"bridge lacks hook points {missing[:3]!r}...; is this a TransformerBridge?")

    def hook_point(self, layer: int) -> str:
        """The TransformerLens hook point of block ``layer``'s output."""
        return hook_name(layer)

    @property
    def hf_config(self) -> object:
        return self._hf.config if self._hf is not None else self.bridge.cfg

    @property
    def torch_module(self) -> torch.nn.Module:
        return self.bridge

    def block_device(self, layer: int) -> torch.device:
        params = list(self.bridge.blocks[layer].parameters())
        return params[0].device if params else self.device

    @contextlib.contextmanager
    def _hooked(self, prompt_mask: Tensor, extra: list | None = None, uncached: bool = False) -> Iterator[None]:
        """Install the active edits (plus ``extra`` hooks) and a pass counter; removed on exit.

        ``uncached``: every pass re-runs the prompt and all tokens generated so far (see :func:`_replaying_edit`).
        """
        self._step = 0

        def make(layer: int, fn):
            if uncached:
                replay = _replaying_edit(fn, layer, prompt_mask, lambda: self._step)
                return lambda hidden, hook: replay(hidden)

            def hook(hidden: Tensor, hook) -> Tensor:
                return fn(hidden, EditContext(layer=layer, step=self._step, prompt_mask=prompt_mask.to(hidden.device)))
            return hook

        hooks = [(hook_name(layer), make(layer, fn)) for layer, fn in sorted(self._edits.items())]
        hooks += list(extra or [])
        last_layer = self.n_layers - 1

        def count(hidden: Tensor, hook) -> Tensor:
            self._step += 1
            return hidden

        hooks.append((hook_name(last_layer), count))
        with self.bridge.hooks(fwd_hooks=hooks):
            yield

    def _read_blocks(self, batch: Batch, layers: list[int], positions: str) -> dict[int, Tensor]:
        """Reader hooks (after the edit hooks) keep each row's last-token vector (or, for ``"all"``, a copy of
        the sequence) and raise :class:`StopForward` after the deepest layer; no KV cache is built."""
        from commandv_interp.access.positions import gather_rows  # here: the module header is another change's

        saved: dict[int, Tensor] = {}
        stop_after = max(layers)
        batch = batch.to(self.device)
        index = batch.last_index if positions == "last" else None

        def make_reader(layer: int):
            def reader(hidden: Tensor, hook) -> Tensor:
                kept = gather_rows(hidden, index) if index is not None else hidden.clone()
                saved[layer] = kept.detach()
                if layer == stop_after:
                    raise StopForward
                return hidden
            return reader

        readers = [(hook_name(layer), make_reader(layer)) for layer in layers]
        with self._hooked(batch.attention_mask, extra=readers):
            try:
                self.bridge(batch.input_ids, attention_mask=batch.attention_mask, return_type="logits",
                            use_cache=False)
            except StopForward:
                pass
        return saved

    def _forward(self, batch: Batch) -> Float[Tensor, "batch pos vocab"]:
        batch = batch.to(self.device)
        with self._hooked(batch.attention_mask):
            return self.bridge(batch.input_ids, attention_mask=batch.attention_mask, return_type="logits")

    def _generate_ids(self, batch: Batch, max_new_tokens: int) -> Int[Tensor, "batch new"]:
        if self._hf is None:
            raise ValueError("generation needs a bridge booted from a Hugging Face model (boot_transformers)")
        batch = batch.to(self.device)
        with self._hooked(batch.attention_mask, uncached=True):
            ids = self._hf.generate(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=self.tokenizer.pad_token_id, use_cache=False,
            )
        return ids[:, batch.input_ids.shape[1]:].cpu()


def _replaying_edit(fn: EditFn, layer: int, prompt_mask: Int[Tensor, "batch prompt"],
                    step_of: Callable[[], int]) -> Callable[[Tensor], Tensor]:
    """``fn`` as an uncached generation must apply it to equal a cached one.

    A cached run calls ``fn`` once per pass on the positions that pass computes (the prompt with ``step=0``, the
    ``k``-th new token alone with ``step=k``; a decode call is skipped when ``fn.acts_on_decode`` is False) and
    later passes read those edited states from the cache. An uncached pass ``k`` recomputes every position, so the
    returned function keeps the edited states of earlier passes, calls ``fn`` only on the new positions, and puts
    the kept states back in place of the recomputed ones: ``fn`` gets exactly the calls of a cached run (stateful
    edits such as recorders see each position once) and every later layer sees the edited states a cache holds.
    """
    n_prompt = prompt_mask.shape[1]
    kept: list[Tensor] = []  # edited block outputs of the positions computed so far, in order

    def edit(hidden: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        step, n_kept = step_of(), sum(part.shape[1] for part in kept)
        if hidden.shape[1] != n_prompt + step or n_kept != (n_prompt + step - 1 if step else 0):
            raise ValueError(f"uncached generation pass {step} at layer {layer} has {hidden.shape[1]} positions "
                             f"({n_kept} kept), expected prompt {n_prompt} + {step}; did it run with a KV cache?")
        new = hidden[:, n_kept:]
        if step == 0 or getattr(fn, "acts_on_decode", True):
            new = fn(new, EditContext(layer=layer, step=step, prompt_mask=prompt_mask.to(hidden.device)))
        kept.append(new)
        return torch.cat(kept, dim=1) if step else new

    return edit
