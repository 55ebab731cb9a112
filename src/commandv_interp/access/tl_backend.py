"""Stage 1 (access): consumes a TransformerLens ``TransformerBridge``, produces a :class:`ModelAccess`.

Uses the bridge's named hook points ``blocks.{l}.hook_out`` (alias ``hook_resid_post``): the
residual stream after block ``l``. Generation runs through the bridge-wrapped HF model so
Hugging Face's padding and cache semantics are kept and the hook points still fire.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from commandv_interp.access.base import Batch, EditContext, ModelAccess, StopForward
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
    def _hooked(self, prompt_mask: Tensor, extra: list | None = None) -> Iterator[None]:
        """Install the active edits (plus ``extra`` hooks) and a step counter; removed on exit."""
        self._step = 0

        def make(layer: int, fn):
            def hook(hidden: Tensor, hook) -> Tensor:
                ctx = EditContext(layer=layer, step=self._step, prompt_mask=prompt_mask.to(hidden.device))
                return fn(hidden, ctx)
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

    def _read_blocks(self, batch: Batch, layers: list[int]) -> dict[int, Tensor]:
        saved: dict[int, Tensor] = {}
        stop_after = max(layers)

        def make_reader(layer: int):
            def reader(hidden: Tensor, hook) -> Tensor:
                saved[layer] = hidden.detach().clone()
                if layer == stop_after:
                    raise StopForward
                return hidden
            return reader

        readers = [(hook_name(layer), make_reader(layer)) for layer in layers]
        batch = batch.to(self.device)
        with self._hooked(batch.attention_mask, extra=readers):
            try:
                self.bridge(batch.input_ids, attention_mask=batch.attention_mask, return_type="logits")
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
        with self._hooked(batch.attention_mask):
            ids = self._hf.generate(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=self.tokenizer.pad_token_id,
            )
        return ids[:, batch.input_ids.shape[1]:].cpu()
