"""Stage 1 (access): consumes a Hugging Face causal LM, produces a :class:`ModelAccess` on nnsight.

Reads and edits run inside ``nnsight`` traces on the block envoys: interventions are real
tensor code executed in the model's own forward, so the same path works remotely.
"""

from __future__ import annotations

import warnings

import torch

from commandv_interp.access.base import Batch, EditContext, ModelAccess
from commandv_interp.access.blocks import find_block_path, rewrap_block_output, unwrap_block_output
from commandv_interp.types import Float, Int, Tensor

__all__ = ["NNsightAccess"]


class NNsightAccess(ModelAccess):
    """nnsight backend: ``model.<blocks>[l].output`` is block ``l``'s output."""

    backend = "nnsight"

    def __init__(self, hf_model: torch.nn.Module, tokenizer: object, name: str | None = None) -> None:
        from nnsight.modeling.transformers import TransformersModel

        super().__init__()
        if tokenizer is None:
            raise ValueError("the nnsight backend needs a tokenizer: open_model(model, tokenizer=...)")
        hf_model.eval()
        self._hf = hf_model
        self.nn = TransformersModel(hf_model, tokenizer=tokenizer)
        self.tokenizer = tokenizer
        self._block_path = find_block_path(hf_model)
        self.n_layers = len(hf_model.get_submodule(self._block_path))
        self.d_model = int(hf_model.get_input_embeddings().weight.shape[1])
        self.name = name or str(getattr(hf_model.config, "name_or_path", "") or type(hf_model).__name__)

    @property
    def hf_config(self) -> object:
        return self._hf.config

    @property
    def torch_module(self) -> torch.nn.Module:
        return self._hf

    def block_device(self, layer: int) -> torch.device:
        return next(self._hf.get_submodule(self._block_path)[layer].parameters()).device

    def _block_envoy(self, layer: int):
        envoy = self.nn
        for part in self._block_path.split("."):
            envoy = getattr(envoy, part)
        return envoy[layer]

    def _inputs(self, batch: Batch) -> dict:
        batch = batch.to(self.device)
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}

    def _apply_edits(self, prompt_mask: Tensor, step: int, upto: int | None = None) -> None:
        """Inside a trace: apply active edits, layer by layer in execution order."""
        for layer in sorted(self._edits):
            if upto is not None and layer > upto:
                break
            envoy = self._block_envoy(layer)
            out = envoy.output
            hidden = unwrap_block_output(out)
            new = self._edits[layer](hidden, EditContext(layer=layer, step=step, prompt_mask=prompt_mask))
            envoy.output = rewrap_block_output(out, new)

    def _read_blocks(self, batch: Batch, layers: list[int]) -> dict[int, Tensor]:
        saved = {}
        edit_layers = sorted(self._edits)
        prompt_mask = batch.attention_mask
        with self.nn.trace(self._inputs(batch)) as tracer:
            for layer in sorted(set(layers) | {l for l in edit_layers if l <= max(layers)}):
                envoy = self._block_envoy(layer)
                out = envoy.output
                hidden = unwrap_block_output(out)
                if layer in self._edits:
                    hidden = self._edits[layer](hidden, EditContext(layer=layer, step=0, prompt_mask=prompt_mask))
                    envoy.output = rewrap_block_output(out, hidden)
                if layer in layers:
                    saved[layer] = hidden.detach().save()
            tracer.stop()
        return {layer: saved[layer] for layer in layers}

    def forward(self, batch: Batch) -> Float[Tensor, "batch pos vocab"]:
        with self.nn.trace(self._inputs(batch)):
            self._apply_edits(batch.attention_mask, step=0)
            logits = self.nn.output.logits.save()
        return logits

    def _generate_ids(self, batch: Batch, max_new_tokens: int) -> Int[Tensor, "batch new"]:
        decode_edits = any(getattr(fn, "acts_on_decode", True) for fn in self._edits.values())
        n_prompt = batch.input_ids.shape[1]
        prompt_mask = batch.attention_mask.to(self.device)
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        with warnings.catch_warnings():
            # A bounded step loop that outlives an early EOS stop is cut short by design; the
            # result is read in a separate invoke so it is always collected.
            warnings.filterwarnings("ignore", message=".*was never reached.*")
            with self.nn.generate(**kwargs) as tracer:
                with tracer.invoke(self._inputs(batch)):
                    if self._edits and decode_edits:
                        for step in tracer.iter[0:max_new_tokens]:
                            self._apply_edits(prompt_mask, step=int(step))
                    elif self._edits:
                        self._apply_edits(prompt_mask, step=0)
                with tracer.invoke():
                    ids = tracer.result.save()
        return ids[:, n_prompt:].cpu()
