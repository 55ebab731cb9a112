"""Cross-check commandv_interp's pyreft folder I/O against pyreft 0.1.0 itself (slow tier; issue 21 item 5).

pyreft 0.1.0 pins transformers 4.45.1, so pyreft runs in a side virtual environment (``scripts/pyreft_side.py``);
this script runs in the project's environment:

1. For each kind (NodiReFT, DiReFT, LoReFT, NoReFT) × variant (float32 linear, float32 gelu, bf16 in pyreft's
   dtype layout) it builds a random two-layer adapter, writes it with ``save_adapter`` and records its outputs
   on fixed random inputs.
2. The side script loads each of those folders into pyreft's own intervention classes and runs them on the same
   inputs; it also writes pyreft folders of its own with ``ReftModel.save`` (random weights) plus their outputs,
   and runs the real reference adapter (if present) through ``NodireftIntervention``.
3. This script loads pyreft's folders with ``load_adapter``, runs them, compares every pair (max |diff|) and
   writes ``docs/pyreft_crosscheck.md``.

Usage::

    python scripts/pyreft_crosscheck.py --setup            # create the side venv if missing, then check
    python scripts/pyreft_crosscheck.py --venv PATH --docs docs/pyreft_crosscheck.md

The side venv (default ``${TMPDIR:-/tmp}/commandv-pyreft-venv``) gets ``torch==2.13.0`` (CPU wheel),
``pyreft==0.1.0`` and ``pyvene==0.1.8`` without their dependencies (pyreft's full list drags in jupyter, wandb,
ydata-profiling …, and pip's resolver then swaps in a CUDA torch), then ``transformers==4.45.1``, ``datasets``,
``accelerate`` and ``matplotlib``, which is what ``import pyreft`` needs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from commandv_interp.adapters import Adapter, load_adapter, make_intervention, save_adapter

ROOT = Path(__file__).resolve().parent.parent
SIDE = Path(__file__).resolve().parent / "pyreft_side.py"
DEFAULT_VENV = Path(os.environ.get("TMPDIR", "/tmp")) / "commandv-pyreft-venv"
REFERENCE = Path("/work/shared/reference_adapters/cot_reasoning-Llama-3.2-3B-Instruct-nodireft-l1")
KINDS = ("nodireft", "direft", "loreft", "noreft")
VARIANTS = (("float32", "linear"), ("float32", "gelu"), ("bfloat16", "linear"))
D_MODEL, RANK, LAYERS = 64, 4, [0, 1]
TOL = {"float32": 1e-6, "bfloat16": 2.0 ** -7}
"""Match if max |diff| <= TOL * max(1, max |output|): ~8 float32 ulps, or one bf16 ulp, of the output's scale."""

SETUP_MEASURED = "193 s (PyPI plus a local torch wheel, 2 shared CPU cores, 2026-12-02)"
PIP_STEPS = (
    ["torch==2.13.0"],
    ["--no-deps", "pyreft==0.1.0", "pyvene==0.1.8"],
    ["torch==2.13.0", "transformers==4.45.1", "datasets>=3.0.1", "accelerate>=0.34.2", "matplotlib"],
)


def side_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def venv_ready(venv: Path) -> bool:
    """Whether ``venv`` imports pyreft (and so can run the side script)."""
    py = side_python(venv)
    if not py.is_file():
        return False
    probe = subprocess.run([str(py), "-c", "import pyreft"], capture_output=True, text=True, cwd=tempfile.gettempdir(),
                           env=_side_env())
    return probe.returncode == 0


def setup_venv(venv: Path) -> float:
    """Create the side venv; returns the seconds it took. Raises ``RuntimeError`` with pip's tail on failure."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for args in PIP_STEPS:
        done = subprocess.run([str(side_python(venv)), "-m", "pip", "install", "-q", *args], capture_output=True,
                              text=True)
        if done.returncode != 0:
            tail = "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                             if not line.startswith("WARNING: Location"))[-2000:]
            raise RuntimeError(f"pip install {' '.join(args)} failed in {venv}:\n{tail}")
    if not venv_ready(venv):
        raise RuntimeError(f"{venv} was set up but 'import pyreft' fails there")
    return time.monotonic() - start


def _side_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    return env


@torch.no_grad()
def _our_adapter(kind: str, dtype: str, act: str, seed: int) -> Adapter:
    """Random two-layer adapter; bf16 uses pyreft's layout (linear layers in bf16, a rotation stays float32)."""
    torch.manual_seed(seed)
    ivs = {}
    for layer in LAYERS:
        iv = make_intervention(kind, D_MODEL, RANK, act)
        for _, p in iv.named_parameters():
            p.copy_(torch.randn(p.shape) * (0.3 if p.ndim > 1 else 0.5))
        iv.project()  # rotations back to orthonormal rows
        if dtype == "bfloat16":
            for name in ("learned_source", "proj_layer"):
                if hasattr(iv, name):
                    getattr(iv, name).to(torch.bfloat16)
        ivs[layer] = iv.eval()
    return Adapter(ivs, metadata={"crosscheck": f"{kind}/{dtype}/{act}"})


@torch.no_grad()
def _run(adapter: Adapter, x: torch.Tensor) -> dict[int, torch.Tensor]:
    return {layer: adapter.interventions[layer].eval()(x) for layer in adapter.layers}


def build_plan(work: Path, reference: Path | None) -> tuple[dict, dict]:
    """``(plan for the side script, our outputs for the 'ours' cases)``."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(5, 3, D_MODEL, generator=gen)
    inputs = {"float32": x, "bfloat16": x.to(torch.bfloat16)}
    cases, ours = {}, {}
    for k, kind in enumerate(KINDS):
        for v, (dtype, act) in enumerate(VARIANTS):
            tag, seed = f"{kind}-{dtype}-{act}", 100 * k + 10 * v
            adapter = _our_adapter(kind, dtype, act, seed)
            folder = save_adapter(adapter, work / "ours" / tag)
            ours[f"ours:{tag}"] = _run(adapter, inputs[dtype])
            common = {"kind": kind, "dtype": dtype, "act": act, "d_model": D_MODEL, "rank": RANK, "layers": LAYERS,
                      "input": dtype}
            cases[f"ours:{tag}"] = dict(common, role="ours", folder=str(folder),
                                        add_bias=hasattr(adapter.interventions[0], "proj_layer")
                                        and adapter.interventions[0].proj_layer.bias is not None)
            cases[f"pyreft:{tag}"] = dict(common, role="pyreft", folder=str(work / "pyreft" / tag), seed=seed + 5,
                                          add_bias=True)
    if reference is not None and reference.is_dir():
        inputs["reference"] = (torch.randn(4, 3072, generator=gen) * 2).to(torch.bfloat16)
        cases["reference"] = {"role": "reference", "folder": str(reference), "input": "reference", "dtype": "bfloat16",
                              "kind": "nodireft", "act": "linear"}
    return {"inputs": inputs, "cases": cases}, ours


def run_side(venv: Path, work: Path, timeout: float = 900) -> dict:
    done = subprocess.run([str(side_python(venv)), str(SIDE), str(work)], capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), env=_side_env(), timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"side script failed (rc {done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    return torch.load(work / "side.pt", weights_only=False)


def _compare(mine: dict[int, torch.Tensor], theirs: dict[int, torch.Tensor], dtype: str, x: torch.Tensor) -> dict:
    """Max |diff| over layers; also the edit's size max |theirs − x|, which must be non-trivial (> 0.1)."""
    if sorted(mine) != sorted(theirs):
        return {"match": False, "max_abs": float("nan"), "bit_exact": False,
                "note": f"layers differ: {sorted(mine)} vs {sorted(theirs)}"}
    diffs, scale, exact, edit = [], 1.0, True, 0.0
    for layer in mine:
        a, b = mine[layer], theirs[layer]
        if a.dtype != b.dtype or a.shape != b.shape:
            return {"match": False, "max_abs": float("nan"), "bit_exact": False,
                    "note": f"layer {layer}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"}
        diffs.append((a.float() - b.float()).abs().max().item())
        scale = max(scale, b.float().abs().max().item())
        edit = max(edit, (b.float() - x.float()).abs().max().item())
        exact = exact and torch.equal(a, b)
    worst = max(diffs)
    out = {"match": worst <= TOL[dtype] * scale and edit > 0.1, "max_abs": worst, "scale": scale, "edit": edit,
           "bit_exact": exact}
    if edit <= 0.1:
        out["note"] = f"degenerate: the edit is only {edit:.1e}"
    return out


def compare(plan: dict, ours: dict, side: dict, work: Path) -> list[dict]:
    rows = []
    for name, case in plan["cases"].items():
        got = side["cases"].get(name, {"error": "missing from side.pt"})
        row = {"case": name, "kind": case["kind"], "dtype": case["dtype"], "act": case["act"], "role": case["role"]}
        if "error" in got:
            rows.append(dict(row, match=False, max_abs=float("nan"), bit_exact=False, note=got["error"]))
            continue
        x = plan["inputs"][case["input"]]
        if case["role"] == "ours":
            mine = ours[name]
        else:
            folder = Path(case["folder"])
            if case["role"] == "pyreft" and case["act"] != "linear":
                # pyreft does not store act_fn; declare it the documented way (commandv_metadata.json 'acts').
                copy = work / "pyreft_with_acts" / folder.name
                copy.mkdir(parents=True, exist_ok=True)
                for f in folder.iterdir():
                    (copy / f.name).write_bytes(f.read_bytes())
                (copy / "commandv_metadata.json").write_text(json.dumps(
                    {"acts": {str(layer): case["act"] for layer in case["layers"]}}))
                folder = copy
            adapter = load_adapter(folder)
            mine = _run(adapter, x)
        rows.append(dict(row, **_compare(mine, got["outputs"], case["dtype"], x)))
        if not rows[-1]["bit_exact"] and x.dtype != torch.float32 and case["role"] != "reference":
            # pyreft adds the edit in its compute dtype (float32 for a rotation) and casts the sum; forward() casts
            # the edit to h's dtype first. Redo the sum pyreft's way to see whether that is the whole difference.
            if case["role"] == "ours":
                adapter = load_adapter(case["folder"])
            with torch.no_grad():
                alt = {layer: (x.float() + adapter.interventions[layer].delta(x.float())).to(x.dtype)
                       for layer in adapter.layers}
            rows[-1]["exact_if_added_in_float32"] = _compare(alt, got["outputs"], case["dtype"], x)["bit_exact"]
        static = got.get("static_load")
        if static is not None:
            rows[-1]["static_load"] = (_compare(mine, static["outputs"], case["dtype"], x) if static["ok"]
                                       else {"error": static["error"]})
    return rows


def _fmt(value: float) -> str:
    return "nan" if value != value else ("0" if value == 0 else f"{value:.1e}")


def render(rows: list[dict], versions: dict, setup_s: float | None, run_s: float) -> str:
    direction = {"ours": "commandv → pyreft", "pyreft": "pyreft → commandv",
                 "reference": "reference folder: pyreft vs commandv"}
    lines = [
        "# pyreft cross-check",
        "",
        "Generated by `scripts/pyreft_crosscheck.py` (slow test `tests/test_pyreft_crosscheck.py`); do not edit by "
        "hand.",
        "",
        "Versions in the side venv: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". "
        f"Here: torch {torch.__version__}.",
        "",
        "* **commandv → pyreft**: a random two-layer adapter (d_model 64, rank 4, layers 0 and 1) written by "
        "`save_adapter`, loaded into pyreft's own intervention class (inside a `ReftModel` from `get_reft_model` on a "
        "tiny random Llama) the way pyvene's `load_intervention` does it (`torch.load` of `intkey_<key>.bin` + "
        "`load_state_dict`), both run on the same random inputs (5×3×64).",
        "* **pyreft → commandv**: pyreft interventions with random weights, written by `ReftModel.save` (pyvene's "
        "own writer), read by `load_adapter`. pyreft does not store `act_fn`; the gelu rows declare it in "
        "`commandv_metadata.json` (`acts`), as documented for `load_adapter`.",
        "* **bfloat16** is pyreft's dtype layout: `learned_source`/`proj_layer` in bf16, a rotation (`rotate_layer`, "
        "under torch's orthogonal parametrization) in float32; inputs bf16.",
        "* **reference folder**: the real pyreft adapter in `/work/shared/reference_adapters` (NodiReFT, rank 8, "
        "d_model 3072, 14 layers, bf16, as trained) loaded into `NodireftIntervention` with pyreft's "
        "`load_state_dict` and by `load_adapter`, both run on 4 random bf16 vectors (when the folder is present).",
        f"* **match**: max |diff| ≤ tol × max(1, max |output|), tol = {TOL['float32']:g} (float32) or "
        f"2⁻⁷ = {TOL['bfloat16']:g} (bf16, one ulp). *exact* = bit-identical outputs. *max edit* = "
        "max |output − input|, checked > 0.1 so no row compares identities.",
        "",
        f"**Result**: {sum(r['match'] for r in rows)} of {len(rows)} rows match, "
        f"{sum(r['bit_exact'] for r in rows)} bit-exact"
        + (" (every float32 row)." if all(r["bit_exact"] for r in rows if r["dtype"] == "float32") else "."),
        "",
        "| kind | dtype | act | direction | max abs diff | output scale | max edit | match | exact |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        note = f" ({r['note'][:120]})" if r.get("note") else ""
        lines.append(f"| {r['kind']} | {r['dtype']} | {r['act']} | {direction[r['role']]} | {_fmt(r['max_abs'])} | "
                     f"{_fmt(r.get('scale', float('nan')))} | "
                     f"{_fmt(r.get('edit', float('nan')))} | {'yes' if r['match'] else 'NO' + note} | "
                     f"{'yes' if r['bit_exact'] else 'no'} |")
    inexact = [r for r in rows if r["match"] and not r["bit_exact"]]
    if inexact:
        explained = all(r.get("exact_if_added_in_float32") for r in inexact)
        lines += ["", "## Rows that match but are not bit-exact", "",
                  "Rows: " + ", ".join(f"{r['case']}" for r in inexact) + ". "
                  "The weights load exactly; the outputs differ by one bf16 ulp in a fraction of the elements because "
                  "pyreft adds the edit to `h` in the rotation's dtype (float32) and casts the sum to bf16 "
                  "(`(base + R^T(...)).to(base.dtype)`), while commandv's `Intervention.forward` casts the edit to "
                  "`h`'s dtype first (`h + delta(h)`, `delta` ending in `.to(h.dtype)`), so the sum is rounded twice. "
                  + ("Recomputing commandv's output pyreft's way, `(h.float() + delta(h.float())).to(bf16)`, is "
                     "bit-identical to pyreft in every one of these rows." if explained else
                     "Recomputing pyreft's way does NOT make every row bit-identical: investigate.")]
    lines += ["", "## pyvene's static loader", "",
              "`ReftModel.load(folder, model)` (pyvene's `IntervenableModel.load`) rebuilds interventions from "
              "`config.json` alone. Outcome per folder (compared with commandv's outputs when it loads):", "",
              "| folder | outcome |", "|---|---|"]
    for r in rows:
        st = r.get("static_load")
        if st is None:
            continue
        outcome = (f"error: `{st['error']}`" if "error" in st else
                   f"loads; max abs diff {_fmt(st['max_abs'])}, match {'yes' if st['match'] else 'NO'}")
        lines.append(f"| {r['case']} | {outcome} |")
    lines += ["",
              "The outcome is the same for a folder written by commandv and one written by pyreft (their "
              "`config.json` files are identical but for `transformers_version`, which records each side's "
              "transformers). pyvene builds each intervention from the `representations` fields alone: "
              "`NodireftIntervention`/`NoreftIntervention` index `kwargs['add_bias']`, which the config does not hold "
              "(`KeyError`); without a `dtype` pyreft puts `learned_source` in bf16, so a float32 LoReFT fails on "
              "float32 inputs (`learned_source(base)` meets bf16 weights) and a float32 DiReFT loads rounded to bf16; "
              "`act_fn` is not stored, so it comes back `linear`. These are pyvene/pyreft limits, not format "
              "differences; pyreft users load by rebuilding the `ReftConfig` and calling `load_intervention`, which "
              "is the path checked above (its two calls, `torch.load` + `load_state_dict`, with "
              "`map_location='cpu'`: pyvene 0.1.8 hard-codes `'cuda:0'`).",
              "", "## Running it and timing", "",
              "`python scripts/pyreft_crosscheck.py --setup --docs docs/pyreft_crosscheck.md` (re)creates the side "
              "venv at `${TMPDIR:-/tmp}/commandv-pyreft-venv` (or `--venv PATH`) if it does not import pyreft, then "
              "writes this page. The venv gets "
              "`torch==2.13.0` (CPU wheel), then `pyreft==0.1.0 pyvene==0.1.8` with `--no-deps`, then "
              "`transformers==4.45.1 datasets accelerate matplotlib` (what `import pyreft` needs): pyreft's full "
              "dependency list (jupyter, wandb, ydata-profiling, gcsfs …) sends pip's resolver backtracking into a "
              "CUDA torch.",
              "",
              f"* side venv setup: {'%.0f s this run' % setup_s if setup_s is not None else 'existing venv reused'}; "
              f"a fresh setup measured {SETUP_MEASURED}. Because that is over 3 minutes, the slow test "
              "`tests/test_pyreft_crosscheck.py` uses an existing side venv only (`$COMMANDV_PYREFT_VENV` or the "
              "default path) and skips with the command to create one otherwise; `COMMANDV_PYREFT_SETUP=1` lets it "
              "create the venv (skipping if PyPI is unreachable or pip fails).",
              f"* cross-check run (write, side script, compare): {run_s:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="side venv with pyreft 0.1.0")
    parser.add_argument("--setup", action="store_true", help="create the side venv if it does not import pyreft")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="a real pyreft NodiReFT folder (optional)")
    parser.add_argument("--docs", type=Path, default=None, help="write the markdown table here")
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    setup_s = None
    if not venv_ready(args.venv):
        if not args.setup:
            print(f"no usable side venv at {args.venv}; pass --setup to create it", file=sys.stderr)
            return 2
        setup_s = setup_venv(args.venv)
        print(f"side venv set up in {setup_s:.0f} s")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyreft-crosscheck-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        plan, ours = build_plan(work, args.reference)
        torch.save(plan, work / "plan.pt")
        side = run_side(args.venv, work)
        rows = compare(plan, ours, side, work)
    run_s = time.monotonic() - start
    text = render(rows, side["versions"], setup_s, run_s)
    print(text)
    if args.docs:
        args.docs.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "versions": side["versions"], "setup_s": setup_s,
                                         "run_s": run_s}, indent=2, default=str))
    return 0 if all(r["match"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
