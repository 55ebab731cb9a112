"""Consumes a PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``), produces a :class:`LoraEdit`
and applies it to its base model through forward hooks on the model's own projections.

At every target module ``m`` (a ``Linear`` or GPT-2 ``Conv1D`` inside the decoder blocks)::

    m(x) ← m(x) + B_m (A_m x) · s,     s = lora_alpha / r   (lora_alpha / √r with use_rslora)

with ``A_m`` (r × in) and ``B_m`` (out × r), computed in the order PEFT's ``lora.Linear`` computes it, so the
outputs equal ``peft.PeftModel``'s bit for bit on the same dtype. The folder is read with ``safetensors`` and
``json`` only: no pickle, no code from the folder, and ``peft`` is not imported. What this reader does not model is
refused with the field to change (DoRA, bias training, ``modules_to_save``, rank/alpha patterns, embedding LoRA).
:func:`save_peft_lora` writes the folder back in PEFT's format (what ``PeftModel.from_pretrained`` loads).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from commandv_interp.access import ModelAccess, open_model
from commandv_interp.io import atomic_write, check_input_file, read_json, write_json
from commandv_interp.types import Float, Tensor

__all__ = ["LoraEdit", "load_peft_lora", "save_peft_lora", "lora_applied", "hf_model_of", "block_modules",
           "projections", "CONFIG_FILE", "WEIGHTS_FILE"]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
_BLOCK = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")
_UNSUPPORTED = {"use_dora": (False, None), "modules_to_save": (None, []), "rank_pattern": (None, {}),
                "alpha_pattern": (None, {}), "lora_bias": (False, None), "layers_pattern": (None, []),
                "layer_replication": (None, []), "target_parameters": (None, []), "use_qalora": (False, None),
                "trainable_token_indices": (None, []), "alora_invocation_tokens": (None, [])}


@dataclass(frozen=True)
class LoraEdit:
    """A PEFT LoRA: ``m(x) + B_m (A_m x) · scaling`` at each target module ``m`` (see the module doc).

    Attributes:
        modules: module path in the Hugging Face causal LM (``model.layers.3.self_attn.q_proj``) → ``(A, B)``.
        scaling: ``lora_alpha / r`` (or ``/ √r`` with rsLoRA).
        base_model: the config's ``base_model_name_or_path`` (checked against the model it is applied to).
        config: the folder's ``adapter_config.json`` (kept to write it back).
    """

    modules: dict[str, tuple[Tensor, Tensor]]
    scaling: float
    base_model: str | None = None
    config: dict = field(default_factory=dict)

    kind = "lora"

    def __post_init__(self) -> None:
        if not self.modules:
            raise ValueError("a LoraEdit needs at least one target module, got none")
        ranks = {int(a.shape[0]) for a, _ in self.modules.values()}
        for name, (a, b) in self.modules.items():
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise ValueError(f"LoRA module {name!r}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not "
                                 "compose (A is r × in, B is out × r)")
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                raise ValueError(f"LoRA module {name!r} has NaN/inf weights; retrain it")
        if len(ranks) != 1:
            raise ValueError(f"LoRA modules have different ranks {sorted(ranks)}; rank patterns are not supported")
        if not math.isfinite(self.scaling):
            raise ValueError(f"LoRA scaling must be finite, got {self.scaling!r}")
        object.__setattr__(self, "modules", dict(self.modules))

    @property
    def rank(self) -> int:
        return int(next(iter(self.modules.values()))[0].shape[0])

    @property
    def layers(self) -> list[int]:
        """The decoder blocks the LoRA touches (0-based), read off the module paths."""
        return sorted({block_index(name) for name in self.modules})

    def restricted(self, layers: Sequence[int]) -> LoraEdit | None:
        """The same LoRA on the modules of ``layers`` only (tensors shared); None when it has none there."""
        keep = {n: ab for n, ab in self.modules.items() if block_index(n) in set(layers)}
        return LoraEdit(keep, self.scaling, self.base_model, dict(self.config)) if keep else None

    def check_model(self, access: ModelAccess) -> None:
        """Refuse a model this LoRA was not made for: another base model name, a target module it lacks, shapes that
        disagree with the module's."""
        hf = hf_model_of(access)
        names = {_short(access.name), _short(getattr(getattr(hf, "config", None), "name_or_path", "") or access.name)}
        if self.base_model and _short(self.base_model) not in names:
            raise ValueError(f"this LoRA was trained on {self.base_model!r} but the model is {access.name!r}; apply "
                             "it to its base model (or load it with load_edit(folder, base_model=<name>) if this is "
                             "that model under another name)")
        present = projections(access)
        for name, (a, b) in self.modules.items():
            module = present.get(name)
            if module is None:
                raise ValueError(f"this LoRA targets module {name!r}, which {access.name!r} lacks; apply it to the "
                                 "model it was trained on")
            n_in, n_out = _features(module, name)
            if (a.shape[1], b.shape[0]) != (n_in, n_out):
                raise ValueError(f"LoRA module {name!r} maps {a.shape[1]} → {b.shape[0]} features but "
                                 f"{access.name!r}'s maps {n_in} → {n_out}; apply it to the model it was trained on")


def block_index(module: str) -> int:
    """The decoder block a module path lies in (``model.layers.3.mlp.up_proj`` → 3)."""
    found = _BLOCK.search(f".{module}.")
    if found is None:
        raise ValueError(f"LoRA module {module!r} is not inside a decoder block (no '.layers.<i>.' or '.h.<i>.'); "
                         "only block projections are supported")
    return int(found.group(1))


def _short(name: str) -> str:
    return str(name).rstrip("/").split("/")[-1]


def _features(module: torch.nn.Module, name: str) -> tuple[int, int]:
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":  # GPT-2's, weight (in, out)
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    raise ValueError(f"LoRA module {name!r} is a {type(module).__name__}; only Linear and Conv1D are supported")


def hf_model_of(access: ModelAccess) -> torch.nn.Module:
    """The Hugging Face causal LM behind ``access`` (the module PEFT's module paths are relative to)."""
    bridge = getattr(access, "bridge", None)
    if bridge is not None:
        hf = getattr(bridge, "original_model", None)
        if hf is None:
            raise ValueError(f"{access.name!r} is a TransformerBridge without its Hugging Face model; open the "
                             "Hugging Face model with open_model(hf_model, tokenizer)")
        return hf
    return access.torch_module


_WRAPPED = "_original_component"  # where a TransformerBridge keeps each Hugging Face module it wraps


def projections(access: ModelAccess) -> dict[str, torch.nn.Module]:
    """Module path (PEFT's, as in the plain Hugging Face model) → the ``Linear``/``Conv1D`` projections inside the
    decoder blocks; through a TransformerBridge, the Hugging Face modules it wraps."""
    out = {}
    for path, module in hf_model_of(access).named_modules():
        if (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D") and _BLOCK.search(f".{path}."):
            out.setdefault(path.replace(f".{_WRAPPED}", ""), module)
    return out


def block_modules(access: ModelAccess) -> list[str]:
    """Leaf names of the ``Linear``/``Conv1D`` projections inside the decoder blocks (``q_proj``, ``c_attn`` …)."""
    return sorted({path.rsplit(".", 1)[-1] for path in projections(access)})


def _read_config(folder: Path) -> dict:
    config = read_json(check_input_file(folder / CONFIG_FILE, "PEFT adapter config"))
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        got = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{str(folder)!r} is not a PEFT LoRA folder (peft_type {got!r}, expected 'LORA')")
    for key, allowed in _UNSUPPORTED.items():
        if config.get(key) not in allowed:
            raise ValueError(f"{str(folder)!r}: {key}={config[key]!r} is not supported; save the LoRA without it")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{str(folder)!r}: bias={config['bias']!r} (trained biases) is not supported; use bias='none'")
    for key in ("r", "lora_alpha"):
        if isinstance(config.get(key), bool) or not isinstance(config.get(key), (int, float)) or config[key] <= 0:
            raise ValueError(f"{str(folder)!r}: {key}={config.get(key)!r} must be a positive number")
    return config


def load_peft_lora(folder: str | Path, base_model: str | None = None) -> LoraEdit:
    """Read a PEFT LoRA folder (safetensors only; see the module doc).

    Args:
        folder: holds ``adapter_config.json`` and ``adapter_model.safetensors``.
        base_model: override the config's ``base_model_name_or_path`` (the model name it is checked against).

    Raises:
        ValueError: not a LoRA folder, an unsupported option, tensors missing or of a rank other than ``r``.
    """
    folder = Path(folder)
    config = _read_config(folder)
    tensors = load_file(str(check_input_file(folder / WEIGHTS_FILE, "PEFT adapter weights")))
    parts: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        found = _KEY.match(key)
        if found is None:
            raise ValueError(f"{str(folder)!r}: unexpected tensor {key!r} (only lora_A/lora_B weights of target "
                             "modules are supported)")
        parts.setdefault(found["module"], {})[found["part"]] = value.detach().clone()
    r = int(config["r"])
    modules = {}
    for name, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{str(folder)!r}: module {name!r} lacks lora_{({'A', 'B'} - set(ab)).pop()}.weight")
        if ab["A"].shape[0] != r or ab["B"].ndim != 2 or ab["B"].shape[1] != r:
            raise ValueError(f"{str(folder)!r}: module {name!r} has rank {ab['A'].shape[0]} tensors but the config "
                             f"says r={r}; the folder is inconsistent")
        modules[name] = (ab["A"], ab["B"])
    if not modules:
        raise ValueError(f"{str(folder)!r}: {WEIGHTS_FILE} holds no LoRA tensors")
    scaling = config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)
    return LoraEdit(modules, float(scaling), base_model or config.get("base_model_name_or_path"), config)


def save_peft_lora(lora: LoraEdit, folder: str | Path, base_model: str | None = None) -> Path:
    """Write ``lora`` as a PEFT folder that ``peft.PeftModel.from_pretrained(model, folder)`` loads (float32).

    ``lora_alpha`` is written as ``scaling · r`` (plain LoRA scaling); the target modules as their full paths (PEFT
    matches a path exactly, so no other module gets a LoRA).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} exists and is not a folder; choose a folder for the LoRA")
    folder.mkdir(parents=True, exist_ok=True)
    alpha = lora.scaling * lora.rank
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank,
              "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
              "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "use_dora": False,
              "target_modules": sorted(lora.modules), "layers_to_transform": None, "layers_pattern": None,
              "fan_in_fan_out": bool(lora.config.get("fan_in_fan_out", False)), "modules_to_save": None,
              "init_lora_weights": True, "inference_mode": True,
              "base_model_name_or_path": base_model or lora.base_model}
    tensors = {}
    for name, (a, b) in lora.modules.items():
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = a.detach().float().contiguous().cpu()
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = b.detach().float().contiguous().cpu()
    atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    write_json(folder / CONFIG_FILE, config)
    return folder


@contextlib.contextmanager
def lora_applied(model: ModelAccess, lora: LoraEdit, alpha: float = 1.0) -> Iterator[ModelAccess]:
    """Apply ``lora`` (its scaling times ``alpha``) to every forward/generate inside the block; hooks are removed on
    exit (also on exceptions), leaving the model bit-identical."""
    access = open_model(model)
    lora.check_model(access)
    modules = projections(access)
    handles = []
    try:
        for name, (a, b) in lora.modules.items():
            module = modules[name]
            weight = module.weight  # stored float16 factors run in the projection's dtype, as peft loads them
            handles.append(module.register_forward_hook(_lora_hook(a.to(weight.device, weight.dtype),
                                                                   b.to(weight.device, weight.dtype),
                                                                   lora.scaling * alpha)))
        yield access
    finally:
        for handle in handles:
            handle.remove()


def _lora_hook(a: Float[Tensor, "rank d_in"], b: Float[Tensor, "d_out rank"], scaling: float):
    def hook(module: torch.nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        x = inputs[0]
        delta = torch.nn.functional.linear(torch.nn.functional.linear(x.to(a.dtype), a), b) * scaling
        return output + delta.to(output.dtype)  # PEFT's order: result + lora_B(lora_A(x)) * scaling

    return hook

