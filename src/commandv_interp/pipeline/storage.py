"""Consumes the shapes of a donor/recipient pair, produces the storage of every Command-V artifact.

What a pipeline will store, computed from shapes before anything runs (for pairs too large to try): profiles keep
only last-token vectors; converters are stored factored (rank ``k = min(n_prompts, d_in)``) whenever that holds
fewer numbers than the dense matrix, exactly as :mod:`~commandv_interp.converters.regression` decides; a compiled paste is a
rank-``r`` NodiReFT per recipient layer. ``tests/test_footprint.py`` checks every row against real objects.

>>> frame = storage_table(4096, 32, 3072, 28, n_prompts=1000, adapter_layers=16, rank=8)
>>> round(float(frame.set_index("artifact").loc["converters (as stored)", "MB"]))
918
"""

from __future__ import annotations

import pandas as pd

__all__ = ["storage_table", "converter_numbers"]

PROFILE_BYTES = 4  # float32
CONVERTER_BYTES = 4  # converters are fitted in float64 and saved in float32 (Converters.save)
ADAPTER_BYTES = 4  # float32 (a donor adapter shipped in bf16 is half)


def converter_numbers(d_in: int, d_out: int, n_prompts: int, bias: bool = False) -> int:
    """Numbers stored for one converter direction: factored ``k (d_in + d_out)`` with ``k = min(n_prompts, d_in)``
    when smaller than the dense ``d_in d_out``, plus ``d_out`` for a bias (affine/procrustes)."""
    k = min(n_prompts, d_in)
    factored = k * (d_in + d_out)
    return (factored if factored < d_in * d_out else d_in * d_out) + (d_out if bias else 0)


def storage_table(
    d_donor: int, n_layers_donor: int, d_recipient: int, n_layers_recipient: int, n_prompts: int,
    adapter_layers: int, rank: int, seq_len: int = 512, bias: bool = False,
) -> pd.DataFrame:
    """Numbers and bytes of each artifact for one donor → recipient pair.

    Args:
        d_donor, n_layers_donor, d_recipient, n_layers_recipient: the two models' widths and depths.
        n_prompts: profile prompts.
        adapter_layers: donor layers carrying an intervention (= converter pairs = compiled recipient layers at most).
        rank: the intervention rank.
        seq_len: prompt length for the "full sequences" contrast row (what storing every position would cost).
        bias: converters with a bias (``affine``/``procrustes``).

    The donor adapter is NodiReFT as pyreft stores it (``learned_source`` weight and bias, ``proj_layer`` weight and
    its unused bias); the compiled paste drops that unused bias.

    Returns:
        Columns ``artifact, shape, numbers, bytes, MB``.
    """
    for name, value in (("d_donor", d_donor), ("d_recipient", d_recipient), ("n_prompts", n_prompts),
                        ("adapter_layers", adapter_layers), ("rank", rank), ("seq_len", seq_len)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    dense = 2 * d_donor * d_recipient
    stored = converter_numbers(d_recipient, d_donor, n_prompts, bias) + converter_numbers(d_donor, d_recipient,
                                                                                           n_prompts, bias)
    rows = [
        ("donor profile", f"{n_layers_donor} × {n_prompts} × {d_donor}", n_layers_donor * n_prompts * d_donor,
         PROFILE_BYTES),
        ("recipient profile", f"{n_layers_recipient} × {n_prompts} × {d_recipient}",
         n_layers_recipient * n_prompts * d_recipient, PROFILE_BYTES),
        ("both profiles at every position (not stored)", f"… × {seq_len} positions",
         (n_layers_donor * d_donor + n_layers_recipient * d_recipient) * n_prompts * seq_len, PROFILE_BYTES),
        ("converters, dense (not stored)", f"{adapter_layers} pairs × 2 × {d_recipient} × {d_donor}",
         adapter_layers * dense, CONVERTER_BYTES),
        ("converters (as stored)", f"{adapter_layers} pairs × 2 directions, rank ≤ {min(n_prompts, d_donor)}",
         adapter_layers * stored, CONVERTER_BYTES),
        ("donor adapter", f"{adapter_layers} × (2 × {rank} × {d_donor} + 2 × {rank})",
         adapter_layers * (2 * rank * d_donor + 2 * rank), ADAPTER_BYTES),
        ("compiled paste", f"≤ {adapter_layers} × (2 × {rank} × {d_recipient} + {rank})",
         adapter_layers * (2 * rank * d_recipient + rank), ADAPTER_BYTES),
    ]
    frame = pd.DataFrame([{"artifact": a, "shape": s, "numbers": n, "bytes": n * b} for a, s, n, b in rows])
    frame["MB"] = frame["bytes"] / 1e6
    return frame
