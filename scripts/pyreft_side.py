"""Side half of the pyreft cross-check: runs inside a virtual environment with pyreft 0.1.0 (transformers 4.45.1).

Not importable from commandv_interp (it never imports it). Driven by ``scripts/pyreft_crosscheck.py``, which writes
``<work>/plan.pt`` and reads back ``<work>/side.pt``:

* "ours" cases: folders written by ``commandv_interp.save_adapter``. Each is loaded into pyreft's own intervention
  classes the way pyvene's ``IntervenableModel.load_intervention`` does (``torch.load`` of ``intkey_<key>.bin`` +
  ``intervention.load_state_dict``; the same call with ``map_location='cpu'``, since pyvene hard-codes ``cuda:0``),
  inside a ``ReftModel`` built by ``pyreft.get_reft_model`` on a tiny random Llama. pyvene's static
  ``ReftModel.load(folder, model)`` is tried too and its outcome recorded.
* "pyreft" cases: pyreft interventions with random weights, written by ``ReftModel.save`` (pyvene's own writer).
* "reference": a real pyreft folder, loaded into ``NodireftIntervention`` (bf16, as trained).

Every intervention is run (``eval()``, no dropout) on the plan's fixed inputs; outputs go to ``side.pt``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from pathlib import Path

import torch

CLASSES = {"nodireft": "NodireftIntervention", "direft": "DireftIntervention", "loreft": "LoreftIntervention",
           "noreft": "NoreftIntervention"}


def _tiny_model(d_model: int, n_layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=32, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _intervention(kind: str, d_model: int, rank: int, act: str, dtype: torch.dtype, add_bias: bool):
    import pyreft

    cls = getattr(pyreft, CLASSES[kind])
    kwargs = {"embed_dim": d_model, "low_rank_dimension": rank, "dtype": dtype, "act_fn": act, "dropout": 0.0}
    if kind in ("nodireft", "noreft"):
        kwargs["add_bias"] = add_bias
    return cls(**kwargs)


def _reft_model(case: dict, model):
    import pyreft

    reps = [{"layer": layer, "component": "block_output", "low_rank_dimension": case["rank"],
             "intervention": _intervention(case["kind"], case["d_model"], case["rank"], case["act"],
                                           getattr(torch, case["dtype"]), case.get("add_bias", True))}
            for layer in case["layers"]]
    with contextlib.redirect_stdout(io.StringIO()):
        reft = pyreft.get_reft_model(model, pyreft.ReftConfig(representations=reps), set_device=False)
    reft.eval()
    return reft


def _key(layer: int) -> str:
    return f"layer_{layer}_comp_block_output_unit_pos_nunit_1#0"


@torch.no_grad()
def _outputs(reft, layers: list[int], x: torch.Tensor) -> dict[int, torch.Tensor]:
    return {layer: reft.interventions[_key(layer)].eval()(x).detach().clone() for layer in layers}


@torch.no_grad()
def _randomize(iv, seed: int) -> None:
    """Random, non-trivial weights, as training leaves them.

    For a rotation (torch's orthogonal parametrization, Householder map for a tall ``d × r`` weight) only the strictly
    lower triangle of ``original`` is randomized: the map multiplies column ``j`` by ``int(original[j, j])``, so
    training never moves the diagonal (it gets no gradient) and a random diagonal would zero the rotation.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in iv.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * (0.3 if p.ndim > 1 else 0.5)
        if name.endswith("parametrizations.weight.original"):
            noise = torch.tril(noise, diagonal=-1)
            noise.diagonal().copy_(p.diagonal())
            p.copy_(noise)
        else:
            p.copy_(noise)


def _load_ours(case: dict, model, x: torch.Tensor) -> dict:
    folder = case["folder"]
    reft = _reft_model(case, model)
    for layer in case["layers"]:  # pyvene's load_intervention, with map_location='cpu' instead of 'cuda:0'
        state = torch.load(os.path.join(folder, f"intkey_{_key(layer)}.bin"), map_location="cpu")
        reft.interventions[_key(layer)].load_state_dict(state)
    out = {"outputs": _outputs(reft, case["layers"], x)}
    out["static_load"] = _try_static_load(folder, model, case["layers"], x)
    return out


def _try_static_load(folder: str, model, layers: list[int], x: torch.Tensor) -> dict:
    """pyvene's ``IntervenableModel.load`` (as ``ReftModel.load``): builds interventions from config.json alone."""
    import pyreft

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            reft = pyreft.ReftModel.load(folder, model)
        reft.eval()
        return {"ok": True, "outputs": _outputs(reft, layers, x)}
    except Exception as err:  # recorded, not raised: this is a finding about pyvene, not a failure of the check
        return {"ok": False, "error": f"{type(err).__name__}: {err}".splitlines()[0][:300]}


def _write_pyreft(case: dict, model, x: torch.Tensor) -> dict:
    reft = _reft_model(case, model)
    for i, layer in enumerate(case["layers"]):
        _randomize(reft.interventions[_key(layer)], case["seed"] + i)
    with contextlib.redirect_stdout(io.StringIO()):
        reft.save(case["folder"])
    return {"outputs": _outputs(reft, case["layers"], x),
            "static_load": _try_static_load(case["folder"], model, case["layers"], x)}


@torch.no_grad()
def _reference(case: dict, x: torch.Tensor) -> dict:
    folder = Path(case["folder"])
    config = json.loads((folder / "config.json").read_text())
    out = {}
    for key, rep, dim in zip(config["sorted_keys"], config["representations"], config["intervention_dimensions"]):
        state = torch.load(folder / f"intkey_{key}.bin", map_location="cpu")
        iv = _intervention("nodireft", dim, rep[4], "linear", torch.bfloat16, "proj_layer.bias" in state)
        iv.load_state_dict(state)
        out[int(rep[0])] = iv.eval()(x).detach().clone()
    return {"outputs": out}


def main(work: str) -> int:
    import pyreft
    import transformers

    plan = torch.load(os.path.join(work, "plan.pt"))
    results = {"versions": {"pyreft": getattr(pyreft, "__version__", None) or _dist_version("pyreft"),
                            "pyvene": _dist_version("pyvene"), "transformers": transformers.__version__,
                            "torch": torch.__version__, "python": sys.version.split()[0]},
               "cases": {}}
    models: dict = {}
    for name, case in plan["cases"].items():
        x = plan["inputs"][case["input"]]
        try:
            if case["role"] == "reference":
                results["cases"][name] = _reference(case, x)
                continue
            shape = (case["d_model"], max(case["layers"]) + 1)
            model = models.setdefault(shape, _tiny_model(*shape))
            results["cases"][name] = (_load_ours if case["role"] == "ours" else _write_pyreft)(case, model, x)
        except Exception as err:
            results["cases"][name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    torch.save(results, os.path.join(work, "side.pt"))
    return 0


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
