"""Slow tier: our steering-vector application equals the steering-vectors package's own ``SteeringVector.apply``
(logits and greedy generation) on the tiny Llama. steering-vectors 0.12 pins transformers < 5, so it runs in a side
virtual environment (``$COMMANDV_STEERING_VENV``, default ``/work/sidevenv``; setup in
``scripts/steering_vectors_side.py``); the test is skipped where that venv is absent."""

import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import assert_close, random_prompts
from safetensors.torch import load_file, save_file

from commandv_interp.adapters.edit import apply_edit
from commandv_interp.adapters.steering_vector import SteeringVectorEdit

pytestmark = pytest.mark.slow

SIDE = Path(__file__).resolve().parent.parent / "scripts" / "steering_vectors_side.py"
VENV = Path(os.environ.get("COMMANDV_STEERING_VENV", "/work/sidevenv"))


def test_steering_equals_the_steering_vectors_package(tiny_dir, nn_llama, tmp_path):
    python = VENV / "bin" / "python"
    if not python.exists() or not any((VENV / "lib").glob("python*/site-packages/steering_vectors")):
        pytest.skip(f"no steering-vectors side venv at {VENV} (see scripts/steering_vectors_side.py)")
    v = 2.0 * torch.randn(nn_llama.d_model)
    batch = nn_llama.encode(random_prompts(3, seed=4, min_len=6, max_len=6))  # unpadded: the package adds at pads
    save_file({"vector": v, "input_ids": batch.input_ids}, str(tmp_path / "plan.safetensors"),
              metadata={"layer": "2", "multiplier": "1.5", "max_new_tokens": "16"})
    run = subprocess.run([str(python), str(SIDE), str(tiny_dir / "llama"), str(tmp_path / "plan.safetensors"),
                          str(tmp_path / "side.safetensors")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    side = load_file(str(tmp_path / "side.safetensors"))
    with apply_edit(nn_llama, SteeringVectorEdit({2: v}, scale=1.5)):
        logits = nn_llama.forward(batch)
        generated = nn_llama.generate_ids(batch, 16)
    assert_close(logits, side["logits"], atol=1e-5, rtol=1e-5)  # transformers 4 vs 5 kernels: float32 rounding
    assert torch.equal(generated, side["generated"])
