"""Consumes a model's config, produces its config hash (what a pairing check compares).

The hash covers what changes the function a model computes: architecture, widths, layers, heads, vocabulary,
positional and normalization settings. It does not cover how the model was loaded: its dtype, device,
``device_map``, attention implementation, or the name and library version it was saved with. So the same checkpoint
loaded with ``dtype=torch.bfloat16`` and ``attn_implementation="sdpa"`` hashes as its float32 eager load, and an
adapter trained on one is accepted by the other; another width or another checkpoint config still differs.

The dtype enters the payload as ``"float32"`` whatever the load (rather than being dropped) so that hashes
recorded by earlier versions, which always loaded in float32, stay valid: every shipped zoo adapter records one.
"""

from __future__ import annotations

import hashlib
import json

__all__ = ["LOADING_FIELDS", "config_fields", "config_hash"]

LOADING_FIELDS = ("_name_or_path", "name_or_path", "transformers_version", "_commit_hash", "attn_implementation",
                  "_attn_implementation", "_attn_implementation_internal", "_attn_implementation_autoset",
                  "device_map", "device", "n_devices")
"""Config keys that record how or where a model was loaded or saved, not what it computes (dropped)."""
_DTYPE_FIELDS = ("dtype", "torch_dtype")
_CANONICAL_DTYPE = "float32"  # the value earlier versions hashed: they always loaded in float32


def config_fields(cfg: object) -> dict:
    """The config's fields that define the model's function, with loading choices removed or normalized.

    Args:
        cfg: a Hugging Face ``PretrainedConfig`` (nested sub-configs included) or any object whose plain
            ``int``/``float``/``str``/``bool`` attributes describe the model (e.g. a TransformerLens config).

    Returns:
        A JSON-ready dict.

    >>> from transformers import GPT2Config
    >>> a = config_fields(GPT2Config(n_embd=8, n_layer=1, n_head=2, dtype="bfloat16"))
    >>> a == config_fields(GPT2Config(n_embd=8, n_layer=1, n_head=2, dtype="float32")), a["dtype"]
    (True, 'float32')
    """
    if hasattr(cfg, "to_json_string"):
        fields = json.loads(cfg.to_json_string(use_diff=False))
    else:
        fields = {k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool))}
    return _normalized(fields)


def _normalized(fields: dict) -> dict:
    out = {}
    for key, value in fields.items():
        if key in LOADING_FIELDS:
            continue
        if key in _DTYPE_FIELDS and value is not None:
            value = _CANONICAL_DTYPE
        out[key] = _normalized(value) if isinstance(value, dict) else value
    return out


def config_hash(cfg: object) -> str:
    """Short hash (16 hex digits) of :func:`config_fields`.

    >>> from transformers import GPT2Config
    >>> narrow, wide = GPT2Config(n_embd=8, n_layer=1, n_head=2), GPT2Config(n_embd=16, n_layer=1, n_head=2)
    >>> config_hash(narrow) == config_hash(wide)
    False
    """
    payload = json.dumps(config_fields(cfg), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
