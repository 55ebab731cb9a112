"""Reading keeps nothing full-sequence: rows are gathered inside the forward, which stops after the deepest layer.

Every tensor an ATen op creates during a read is tracked by a weak reference (a ``TorchDispatchMode``); with the
cyclic garbage collector off, whatever is still alive when the read returns is held by a live reference or a
reference cycle, which is exactly what made profiling hold full-sequence activations (issue 20).
"""

import contextlib
import gc
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from conftest import assert_close, random_prompts

import commandv_interp as cv

LATER = {  # module names of blocks 2 and 3, the final norm and the head of the tiny 4-block Llama
    "nnsight": ("model.layers.2", "model.layers.3", "model.norm", "lm_head"),
    "transformer_lens": ("blocks.2", "blocks.3", "ln_final", "unembed"),
}
BLOCK = {"nnsight": "model.layers.{}", "transformer_lens": "blocks.{}"}


@pytest.fixture(params=["nnsight", "transformer_lens"])
def access(request):
    return request.getfixturevalue("nn_llama" if request.param == "nnsight" else "tl_llama")


class CreatedTensors(TorchDispatchMode):
    """Weak references to every tensor an ATen op returns while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[weakref.ref] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.refs += [weakref.ref(t) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out

    def alive(self, min_numel: int) -> list[torch.Tensor]:
        return [t for t in (ref() for ref in self.refs) if t is not None and t.numel() >= min_numel]


@contextlib.contextmanager
def cyclic_gc_off():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def storages(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def test_profile_keeps_only_last_token_rows_after_each_batch(access, monkeypatch):
    """Each batch of a profile leaves alive only its ``batch × d_model`` rows, not one tensor of ``batch × pos``
    elements or more (hidden states, masks, KV cache), though nothing is collected."""
    read, checked = access.read, []

    def checked_read(batch, layers, positions="last", remote=False):
        with CreatedTensors() as created:
            rows = read(batch, layers, positions, remote)
        n_rows, n_pos = batch.input_ids.shape
        assert all(r.shape == (n_rows, access.d_model) for r in rows.values())
        kept = storages(rows.values())
        full = [t for t in created.alive(min_numel=n_rows * n_pos) if t.untyped_storage().data_ptr() not in kept]
        assert full == [], f"batch {len(checked)} left {[tuple(t.shape) for t in full]} alive"
        checked.append(n_pos)
        return rows

    monkeypatch.setattr(access, "read", checked_read)
    prompts = random_prompts(10, seed=2)
    with cyclic_gc_off():
        got = cv.profile(access, prompts, batch_size=4, progress=False)
    assert len(checked) == 3 and got.n_prompts == 10
    monkeypatch.undo()
    want = cv.profile(access, prompts, batch_size=4, progress=False)
    for layer in want.layers:
        assert torch.equal(got[layer], want[layer])


def test_reading_more_layers_keeps_no_more_alive_during_the_pass(access):
    """When the deepest block starts, reading every layer holds no more ``batch × pos × d_model`` tensors than
    reading that layer alone: earlier layers left only their rows behind."""
    batch = access.encode(random_prompts(6, seed=3))
    block = access.torch_module.get_submodule(BLOCK[access.backend].format(3))
    full_size = batch.input_ids.numel() * access.d_model

    def alive_when_block_3_starts(layers):
        counts = []
        with cyclic_gc_off(), CreatedTensors() as created:
            handle = block.register_forward_pre_hook(lambda m, a: counts.append(len(created.alive(full_size))))
            try:
                access.read(batch, layers)
            finally:
                handle.remove()
        return counts

    every, alone = alive_when_block_3_starts(range(4)), alive_when_block_3_starts([3])
    assert len(alone) == 1 and every == alone


@pytest.mark.parametrize("layers", [[1], [0, 3]])
def test_read_all_positions_keeps_only_requested_sequences(access, layers):
    """``positions="all"`` returns the full sequences asked for, and only those stay alive."""
    batch = access.encode(random_prompts(5, seed=4))
    with cyclic_gc_off(), CreatedTensors() as created:
        got = access.read(batch, layers, positions="all")
        n_rows, n_pos = batch.input_ids.shape
        assert all(got[layer].shape == (n_rows, n_pos, access.d_model) for layer in layers)
        assert storages(created.alive(min_numel=n_rows * n_pos)) <= storages(got.values())
    last = access.read(batch, layers)
    for layer in layers:
        assert_close(got[layer][torch.arange(n_rows), batch.last_index], last[layer], atol=0, rtol=0)


@contextlib.contextmanager
def called_modules():
    """The ids of every module (of any model) called inside the block, via a global forward pre-hook."""
    called: list[int] = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda module, args: called.append(id(module)))
    try:
        yield called
    finally:
        handle.remove()


@pytest.mark.parametrize("positions", ["last", "all"])
def test_read_stops_after_deepest_layer(access, positions):
    """Reading layer 1 runs block 1 but never a later block, the final norm or the head."""
    backend = access.backend
    names = {id(module): name for name, module in access.torch_module.named_modules()}
    with called_modules() as called:
        access.read(access.encode(random_prompts(3, seed=5)), [0, 1], positions=positions)
    ran = {names[i] for i in called if i in names}
    assert BLOCK[backend].format(1) in ran
    later = sorted(name for name in ran if any(name == p or name.startswith(p + ".") for p in LATER[backend]))
    assert later == []


def test_read_under_edits_stops_before_later_edits(access):
    """Edits below the deepest layer read act on what is read; an edit above it never runs; still only rows stay."""
    calls = []

    def edit(hidden, ctx):
        calls.append(ctx.layer)
        return hidden + 1.0

    batch = access.encode(random_prompts(4, seed=6))
    plain = access.read(batch, [2])[2]
    with access.edited({1: edit, 3: edit}), cyclic_gc_off(), CreatedTensors() as created:
        edited = access.read(batch, [0, 2])
        assert storages(created.alive(min_numel=batch.input_ids.numel())) <= storages(edited.values())
    assert calls == [1]
    assert not torch.allclose(edited[2], plain)
