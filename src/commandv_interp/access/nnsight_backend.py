"""Consumes a Hugging Face causal LM, produces a :class:`ModelAccess` on nnsight.

Reads and edits run inside ``nnsight`` traces on the block envoys: interventions are real tensor code executed
in the model's own forward. Locally the edit functions run as they are. With ``remote=True`` (NDIF) or
``remote="local"`` (nnsight's simulation of it) the trace body is shipped: it then references only block envoys,
tensors and the plain-torch functions of :mod:`~commandv_interp.access.intrace` (shipped by value), each edit
travels as its low-rank tensors, and only last-token vectors (or the new token ids) come back.

What runs where, remotely: the client tokenizes, computes position masks and the edits' tensors, and fits
everything afterwards; the server runs the model, the in-trace edits and the last-token gather.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

from commandv_interp.access import intrace
from commandv_interp.access.base import Batch, EditContext, EditFn, ModelAccess, StopForward
from commandv_interp.access.blocks import find_block_path, rewrap_block_output, unwrap_block_output
from commandv_interp.access.positions import gather_rows, prompt_position_mask
from commandv_interp.access.prefix import PrefixStates, prefix_states, replayed_blocks, suffix_inputs
from commandv_interp.types import Float, Int, Tensor

__all__ = ["NNsightAccess"]


@contextlib.contextmanager
def _fresh_sources() -> Iterator[None]:
    """Forget nnsight's cached source of this file when a session ends.

    Under ``remote="local"`` nnsight 0.8 runs the deserialized session body under this file's name, and the traces
    inside it cache that body as the file's source (``nnsight.tracing.globals.SOURCES``, never re-read); every
    later trace entered from this file would then fail to find its ``with`` block. A real server runs the body in
    another process, so this only matters for the simulation, and dropping the entry is always safe.
    """
    try:
        yield
    finally:
        from nnsight.tracing.globals import SOURCES

        SOURCES.pop(__file__, None)


class NNsightAccess(ModelAccess):
    """nnsight backend: ``model.<blocks>[l].output`` is block ``l``'s output."""

    backend = "nnsight"
    supports_remote = True

    def __init__(self, hf_model: torch.nn.Module, tokenizer: object, name: str | None = None,
                 envoy: object | None = None) -> None:
        """``envoy``: an nnsight model already wrapping ``hf_model`` (e.g. ``LanguageModel("org/name")``, whose hub id
        is what a remote request names); by default the model is wrapped here."""
        from nnsight.modeling.transformers import TransformersModel

        super().__init__()
        if tokenizer is None:
            raise ValueError("the nnsight backend needs a tokenizer: open_model(model, tokenizer=...)")
        hf_model.eval()
        self._hf = hf_model
        self.nn = envoy if envoy is not None else TransformersModel(hf_model, tokenizer=tokenizer)
        self.tokenizer = tokenizer
        self._block_path = find_block_path(hf_model)
        self.n_layers = len(hf_model.get_submodule(self._block_path))
        self.d_model = int(hf_model.get_input_embeddings().weight.shape[1])
        self.name = name or str(getattr(hf_model.config, "name_or_path", "") or type(hf_model).__name__)
        self._block_template: object = None  # what a block returns (seen by hidden_suffix), for replayed passes

    @property
    def hf_config(self) -> object:
        return self._hf.config

    @property
    def torch_module(self) -> torch.nn.Module:
        return self._hf

    def hook_point(self, layer: int) -> str:
        """The nnsight module path whose ``.output`` is block ``layer``'s output (e.g. ``model.layers.3``)."""
        return f"{self._block_path}.{layer}"

    def block_device(self, layer: int) -> torch.device:
        """Where block ``layer`` computes: its accelerate hook's execution device (offloaded or dispatched with
        ``device_map``), else the device of its parameters."""
        block = self._hf.get_submodule(self._block_path)[layer]
        hook_device = getattr(getattr(block, "_hf_hook", None), "execution_device", None)
        if hook_device is not None:
            return torch.device(hook_device if not isinstance(hook_device, int) else f"cuda:{hook_device}")
        return next(block.parameters()).device

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

    def _read_blocks(self, batch: Batch, layers: list[int], positions: str) -> dict[int, Tensor]:
        """One trace: edits applied and rows gathered block by block, then the forward stopped after the deepest
        layer by raising :class:`StopForward` from the trace body.

        Not ``tracer.stop()``: nnsight 0.8 raises its stop from a frame that also holds it in a local
        (``Interleaver.handle``'s ``stopped``), a cycle through the traceback that kept every frame of the
        stopped forward (the full-sequence hidden states of each block, the attention mask) alive until the
        cyclic garbage collector ran. Our exception reaches us with no such cycle, and dropping it frees them.
        No body statement binds a full-sequence tensor to a name either: the names a body binds live on in
        the trace's scope until the call returns.
        """
        saved: dict[int, Tensor] = {}
        index = batch.last_index if positions == "last" else None
        deepest = max(layers)
        order = sorted(set(layers) | {layer for layer in self._edits if layer <= deepest})
        steps = [(self._block_envoy(layer), layer, self._edits.get(layer), layer in layers) for layer in order]
        try:
            with self.nn.trace(self._inputs(batch), use_cache=False):
                for envoy, layer, edit, keep in steps:
                    _read_block(envoy, layer, edit, batch.attention_mask, index, saved if keep else None)
                raise StopForward
        except StopForward:
            pass
        return saved

    def _forward(self, batch: Batch) -> Float[Tensor, "batch pos vocab"]:
        with self.nn.trace(self._inputs(batch)):
            self._apply_edits(batch.attention_mask, step=0)
            logits = self.nn.output.logits.save()
        return logits

    supports_prefix = True

    def prefix_states(self, prefixes, batch_size: int = 32, through_layer: int | None = None) -> PrefixStates:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        stop = None if through_layer is None else self._hf.get_submodule(self._block_path)[
            self._check_layers([through_layer])[0]]
        return prefix_states(self._hf, prefixes, pad, batch_size, stop_block=stop)

    def forward_suffix(self, states: PrefixStates, rows, batch: Batch,
                       start: tuple[int, Tensor] | None = None) -> Float[Tensor, "batch pos vocab"]:
        """The Hugging Face model run directly on the suffixes and their cached prefixes, the active edits applied
        by forward hooks on the blocks (removed on exit); from ``start``'s block on (:func:`replayed_blocks`)."""
        kwargs = suffix_inputs(self._hf, states, rows, batch.input_ids, batch.attention_mask)
        blocks = self._hf.get_submodule(self._block_path)
        replay = contextlib.nullcontext()
        if start is not None:
            layer = self._check_layers([start[0]])[0]
            if any(edited < layer for edited in self._edits):
                raise ValueError(f"an edit acts below block {layer}, where the pass would start: start it at block "
                                 f"{min(self._edits)} or lower")
            if self._block_template is None:
                raise ValueError("start states come from hidden_suffix over the same suffixes; take them first")
            replay = replayed_blocks(blocks, layer, start[1].to(self.block_device(layer)), self._block_template)
        mask = torch.ones((len(kwargs["input_ids"]), 1), dtype=torch.long, device=self.device)
        handles = [blocks[layer].register_forward_hook(_suffix_hook(fn, layer, mask))
                   for layer, fn in sorted(self._edits.items())]
        try:
            with replay:
                return self._hf(**kwargs, use_cache=True).logits
        finally:
            for handle in handles:
                handle.remove()

    def hidden_suffix(self, states: PrefixStates, rows, batch: Batch, layer: int) -> Float[Tensor, "batch pos d_model"]:
        """Block ``layer``'s output at every suffix position of a pass with no edit (the active ones are not applied
        here), stopped after that block: detached, on the model's device and in its dtype."""
        layer = self._check_layers([layer])[0]
        kwargs = suffix_inputs(self._hf, states, rows, batch.input_ids, batch.attention_mask)
        saved: dict[str, Tensor] = {}

        def keep(module, args, output):
            saved["hidden"] = unwrap_block_output(output).detach()
            if self._block_template is None:  # the structure the blocks return, for replayed_blocks
                self._block_template = output if isinstance(output, torch.Tensor) else (None,) + tuple(output[1:])
            raise StopForward

        self._stopped_pass(kwargs, {layer: keep})
        return saved["hidden"]

    def _stopped_pass(self, kwargs: dict, hooks: dict) -> None:
        """A no-grad pass of the Hugging Face model over ``kwargs`` with forward ``hooks`` on blocks (layer → hook;
        one of them raises :class:`StopForward` to end the pass there), removed on exit."""
        blocks = self._hf.get_submodule(self._block_path)
        handles = [blocks[layer].register_forward_hook(hook) for layer, hook in hooks.items()]
        try:
            with torch.no_grad():
                self._hf(**kwargs, use_cache=True)
        except StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()

    def generate_suffix(self, states: PrefixStates, rows, prompts, max_new_tokens: int) -> Int[Tensor, "batch new"]:
        """Hugging Face ``generate`` on the left-padded prompts with their prefixes' cache (so its first pass runs the
        last prompt token only), the active edits applied on that pass by forward hooks (removed on exit)."""
        if any(getattr(fn, "acts_on_decode", True) for fn in self._edits.values()):
            raise ValueError("generate_suffix applies edits at the last prompt token only; an active edit acts on "
                             "decode steps too: generate whole prompts (generate_ids)")
        rows, prompts = list(rows), [list(p) for p in prompts]
        if [len(p) - 1 for p in prompts] != [states.lengths[r] for r in rows]:
            raise ValueError("each prompt must be its prefix row's tokens plus one (the last prompt token)")
        last = torch.tensor([[p[-1]] for p in prompts], dtype=torch.long, device="cpu")  # moved by suffix_inputs
        kwargs = suffix_inputs(self._hf, states, rows, last, torch.ones_like(last))
        width = kwargs["attention_mask"].shape[1]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=self.device)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long, device=self.device)
        blocks = self._hf.get_submodule(self._block_path)
        mask = torch.ones((len(prompts), 1), dtype=torch.long, device=self.device)
        calls = {layer: 0 for layer in self._edits}

        def first_pass_only(fn: EditFn, layer: int):
            edit = _suffix_hook(fn, layer, mask)

            def hook(module, args, output):
                calls[layer] += 1
                return edit(module, args, output) if calls[layer] == 1 else output
            return hook

        handles = [blocks[layer].register_forward_hook(first_pass_only(fn, layer))
                   for layer, fn in sorted(self._edits.items())]
        cache_key = next(k for k in kwargs if k not in ("input_ids", "position_ids", "attention_mask"))
        try:
            with torch.no_grad():
                out = self._hf.generate(input_ids=ids, attention_mask=kwargs["attention_mask"],
                                        max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                        **{cache_key: kwargs[cache_key]})
        finally:
            for handle in handles:
                handle.remove()
        return out[:, width:].cpu()

    def read_suffix(self, states: PrefixStates, rows, batch: Batch, layers) -> dict[int, Tensor]:
        """The Hugging Face model run directly on the suffixes and their cached prefixes, the block outputs taken by
        forward hooks (removed on exit) and the pass stopped after the deepest layer."""
        if self._edits:
            raise ValueError("read_suffix runs with no edit active (the prefix states were taken without edits); "
                             "read whole texts inside edited()")
        layers = self._check_layers(layers)
        if max(layers) >= len(states.keys[rows[0]]):
            raise ValueError(f"the prefix states cover layers up to {len(states.keys[rows[0]]) - 1}, "
                             f"the read asks for {max(layers)}; take them with through_layer={max(layers)}")
        kwargs = suffix_inputs(self._hf, states, rows, batch.input_ids, batch.attention_mask)
        last = (batch.attention_mask.sum(1) - 1).to(self.device)
        saved: dict[int, Tensor] = {}

        def keep(layer: int):
            def hook(module, args, output):
                hidden = unwrap_block_output(output)
                saved[layer] = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].detach().to(
                    "cpu", torch.float32)
                if layer == layers[-1]:
                    raise StopForward
            return hook

        self._stopped_pass(kwargs, {layer: keep(layer) for layer in layers})
        return saved

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

    # -- remote (NDIF / remote="local") ------------------------------------------------------------
    # Trace bodies below reference only envoys, tensors and intrace functions: nothing of this package
    # needs to exist on the server.

    def _remote_plan(self, prompt_mask: Tensor) -> dict[int, list[tuple]]:
        """Layer → the active edits as ``(select, W, b, P, act, on_decode)`` tuples for :func:`intrace.apply_edits`."""
        plan = {}
        for layer, fn in sorted(self._edits.items()):
            forms = getattr(fn, "low_rank", None)
            if forms is None:
                name = getattr(fn, "__qualname__", type(fn).__name__)
                raise ValueError(f"the edit at layer {layer} ({name}) cannot run in a remote trace: only pastes "
                                 "and adapters with a low-rank form (NodiReFT, DiReFT, linear LoReFT/NoReFT) are "
                                 "shipped to a server; run this one locally (remote=False)")
            plan[layer] = [(prompt_position_mask(prompt_mask, f.rule, f.k), *f.tensors(), f.act, f.acts_on_decode)
                           for f in forms]
        return plan

    def _envoys(self, layers) -> dict:
        return {layer: self._block_envoy(layer) for layer in layers}

    def _read_remote(self, batches: list[Batch], layers: list[int], positions: str,
                     remote: bool | str) -> list[dict[int, Tensor]]:
        import nnsight

        nnsight.register(intrace)
        read_blocks, keep = intrace.read_blocks, set(layers)
        jobs = []
        for batch in batches:
            plan = self._remote_plan(batch.attention_mask)
            order = sorted(set(layers) | {layer for layer in plan if layer <= max(layers)})
            jobs.append((self._inputs_cpu(batch), batch.last_index if positions == "last" else None, plan, order))
        envoys = self._envoys(sorted({layer for *_, order in jobs for layer in order}))
        results, nn = [], self.nn  # the body must not reference `self` (it would ship this package's object)
        # tracer.stop() spares the server the blocks above the deepest layer. Its stop is kept in a reference cycle
        # until the cyclic GC runs (see _read_blocks), in the server's process, or in this one under remote="local":
        # the simulation, not a client, then holds one stopped forward a while. (No comment lines inside the session:
        # the server re-parses the body, and they would shift its line numbers.)
        with nn.session(remote=remote), _fresh_sources():
            for inputs, index, plan, order in jobs:
                with nn.trace(inputs, use_cache=False) as tracer:
                    results.append(read_blocks(envoys, order, plan, keep, index))
                    tracer.stop()
            nnsight.save(results)
        return [{layer: value.detach().to("cpu", torch.float32) for layer, value in r.items()} for r in results]

    def _forward_remote(self, batch: Batch, remote: bool | str) -> Tensor:
        import nnsight

        nnsight.register(intrace)
        edit_blocks, plan, inputs = intrace.edit_blocks, self._remote_plan(batch.attention_mask), self._inputs_cpu(batch)
        envoys, nn = self._envoys(plan), self.nn
        with nn.trace(inputs, remote=remote):
            edit_blocks(envoys, plan, 0)
            logits = nnsight.save(nn.output.logits.detach().cpu())
        return logits

    def _generate_ids_remote(self, batch: Batch, max_new_tokens: int, remote: bool | str) -> Tensor:
        # The server re-parses this body from its unparsed source: keep every statement inside the `with`
        # blocks on one line so its line numbers match this file's (nested `with` blocks are found by line).
        import nnsight

        nnsight.register(intrace)
        edit_blocks, plan, inputs = intrace.edit_blocks, self._remote_plan(batch.attention_mask), self._inputs_cpu(batch)
        envoys = self._envoys(plan)
        decode = any(entry[-1] for entries in plan.values() for entry in entries)
        steps, n_prompt = (max_new_tokens if decode else 1), batch.input_ids.shape[1]
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was never reached.*")
            with self.nn.generate(remote=remote, **kwargs) as tracer:
                with tracer.invoke(inputs):
                    for step in (tracer.iter[0:steps] if plan else []):
                        edit_blocks(envoys, plan, step)
                with tracer.invoke():
                    ids = nnsight.save(tracer.result[:, n_prompt:].cpu())
        return ids

    def _inputs_cpu(self, batch: Batch) -> dict:
        return {"input_ids": batch.input_ids.cpu(), "attention_mask": batch.attention_mask.cpu()}


def _read_block(envoy, layer: int, edit: EditFn | None, prompt_mask: Tensor, index: Tensor | None,
                saved: dict[int, Tensor] | None) -> None:
    """Inside a trace: apply ``edit`` to block ``layer``'s output and, if ``saved`` is given, store there the rows
    at ``index`` (each row's last prompt token; ``None``: the whole sequence), detached.

    A function rather than trace-body statements so the block's full hidden states are bound only in this frame,
    which ends with the call.
    """
    output = envoy.output
    hidden = unwrap_block_output(output)
    if edit is not None:
        hidden = edit(hidden, EditContext(layer=layer, step=0, prompt_mask=prompt_mask))
        envoy.output = rewrap_block_output(output, hidden)
    if saved is not None:
        saved[layer] = (gather_rows(hidden, index) if index is not None else hidden).detach()


def _suffix_hook(edit: EditFn, layer: int, prompt_mask: Tensor):
    def hook(module, args, output):
        hidden = unwrap_block_output(output)
        return rewrap_block_output(output, edit(hidden, EditContext(layer=layer, step=0, prompt_mask=prompt_mask)))
    return hook
