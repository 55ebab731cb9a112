"""The README quickstart, step for step, on the tiny test models (donor: Llama via nnsight; recipient: GPT-2)."""

import torch

from conftest import random_prompts

import commandv_interp as cv


def test_readme_quickstart(tiny_dir, tl_llama, tmp_path):
    donor = cv.open_model(tiny_dir / "llama")                          # HF checkpoint dir → nnsight backend
    recipient = cv.open_model(tiny_dir / "gpt2")
    (tmp_path / "prompts.txt").write_text("\n".join(random_prompts(64, seed=3)))
    prompts = cv.load_prompts(tmp_path / "prompts.txt")
    p_donor = cv.profile(donor, prompts, progress=False)
    p_recipient = cv.profile(recipient, prompts, progress=False)
    layer_map = cv.match_layers(p_donor, p_recipient, method="similarity", metric="cka")
    converters = cv.fit_converters(p_donor, p_recipient, layer_map, method="ridge")
    examples = [(p, "w5") for p in prompts[:16]]
    adapter, record = cv.train_adapter(donor, examples, layers=[0, 2], rank=4, steps=20, progress=False)
    cv.save_adapter(adapter, tmp_path / "adapter")
    adapter = cv.load_adapter(tmp_path / "adapter")
    batch = recipient.encode(prompts[:3])
    before = recipient.generate(batch, max_new_tokens=5)
    with cv.paste(recipient, adapter, converters, positions="last"):
        pasted = recipient.generate(batch, max_new_tokens=5)
    assert len(pasted) == 3 and recipient.generate(batch, max_new_tokens=5) == before
    assert cv.open_model(tl_llama) is tl_llama and record.steps == 20
    assert torch.equal(p_donor[0], cv.profile(donor, prompts, layers=[0], progress=False)[0])
