"""Entering a paste does no dense d_R × d_D product and no autograd work; the compiled form waits until asked for."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import random_adapter, random_prompts

import commandv_interp as cv


class _Shapes(TorchDispatchMode):
    """Records the shape and requires_grad of every tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.outputs: list[tuple[tuple[int, ...], bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.outputs.append((tuple(t.shape), t.requires_grad))
        return out


def test_paste_entry_allocates_no_dense_product_and_touches_no_parameter(nn_llama, nn_gpt2):
    prompts = random_prompts(12, seed=4)  # fewer prompts than either width: converters stay factored
    p_d, p_r = cv.profile(nn_llama, prompts, progress=False), cv.profile(nn_gpt2, prompts, progress=False)
    conv = cv.fit_converters(p_d, p_r, cv.match_layers(p_d, p_r, "depth", [0, 2]), "ridge")
    assert all(c.right is not None for p in conv for c in (p.to_donor, p.to_recipient))
    adapter = random_adapter(nn_llama.d_model, layers=(0, 2))
    for iv in adapter.interventions.values():
        iv.requires_grad_(True)  # as a freshly loaded or trained adapter's parameters are
    before = {(layer, k): v.clone() for layer, iv in adapter.interventions.items()
              for k, v in iv.state_dict().items()}
    dense = {(nn_gpt2.d_model, nn_llama.d_model), (nn_llama.d_model, nn_gpt2.d_model)}
    recorder = _Shapes()
    with recorder:
        context = cv.paste(nn_gpt2, adapter, conv)
        context.__enter__()
    try:
        assert not any(shape in dense for shape, _ in recorder.outputs), "a dense d_R × d_D tensor was built"
        assert not any(grad for _, grad in recorder.outputs), "entry built an autograd graph"
        edits = nn_gpt2.active_edits
        assert set(edits) == set(conv.layer_map().values())
        assert all("low_rank" not in vars(edit) for edit in edits.values())  # compiled form not built yet
        forms = edits[0].low_rank  # built on first request (what a remote trace needs)
        assert forms[0].tensors()[0].shape == (adapter.rank, nn_gpt2.d_model)
    finally:
        context.__exit__(None, None, None)
    assert not nn_gpt2.active_edits
    for iv in adapter.interventions.values():
        assert all(p.requires_grad and p.grad is None for p in iv.parameters())
    after = {(layer, k): v for layer, iv in adapter.interventions.items() for k, v in iv.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)
