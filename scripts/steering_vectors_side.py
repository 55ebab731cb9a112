"""Side half of the steering-vectors cross-check: runs inside a virtual environment with steering-vectors 0.12
(which pins transformers < 5), never importing commandv_interp. Driven by ``tests/test_steering_vector_side.py``.

Usage: ``python steering_vectors_side.py MODEL_DIR PLAN OUT`` where ``PLAN`` is a safetensors file with
``vector`` (d_model), ``input_ids`` (batch × pos, unpadded) and metadata ``layer``, ``multiplier`` and
``max_new_tokens``. The tiny model at ``MODEL_DIR`` is run with ``SteeringVector(...).apply(model, multiplier)``
(layer_type ``decoder_block``, every token): its logits and greedy new token ids go to ``OUT`` (safetensors).

Setup (once; about a minute with a local torch wheel)::

    python3 -m venv /work/sidevenv
    /work/sidevenv/bin/pip install torch==2.13.0 "transformers<5" "steering-vectors==0.12.*" safetensors
"""

from __future__ import annotations

import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def main(model_dir: str, plan: str, out: str) -> None:
    from steering_vectors import SteeringVector
    from transformers import AutoModelForCausalLM

    with safe_open(plan, framework="pt") as handle:
        meta = handle.metadata()
        vector, ids = handle.get_tensor("vector"), handle.get_tensor("input_ids")
    layer, multiplier, new = int(meta["layer"]), float(meta["multiplier"]), int(meta["max_new_tokens"])
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    steering = SteeringVector(layer_activations={layer: vector}, layer_type="decoder_block")
    with torch.no_grad(), steering.apply(model, multiplier=multiplier):
        logits = model(input_ids=ids).logits
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                   do_sample=False, pad_token_id=0)[:, ids.shape[1]:]
    save_file({"logits": logits.contiguous(), "generated": generated.contiguous()}, out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
