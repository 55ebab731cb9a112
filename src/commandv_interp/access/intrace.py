"""The code that runs *inside* an nnsight trace when the trace runs remotely.

A remote trace (NDIF, or nnsight's ``remote="local"`` simulation) ships its body as source plus the values it
references; the server has torch, einops, transformers and nnsight, but not this package. So everything the body
calls lives here: plain torch on tensors passed in, no imports from ``commandv_interp``, no annotations that
name other packages, and ``@no_type_check`` so no runtime type-checker wraps them. The module is shipped by value
(``nnsight.register``) with every remote request; ``tests/test_remote.py`` runs the simulation with this package
made unimportable, as on a server.

Edits travel as :class:`LowRankEdit` data (``h ← h + act(h Wᵀ + b) P`` at selected positions), which is the
exact form of every compilable paste (:func:`~commandv_interp.compile.compile_paste`) and native NodiReFT/DiReFT
adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import no_type_check

import torch

__all__ = ["LowRankEdit", "hidden_of", "with_hidden", "last_rows", "apply_low_rank", "apply_edits", "edit_blocks",
           "read_blocks"]

_ACT = {"linear": None, "relu": "relu", "gelu": "gelu", "silu": "silu", "tanh": "tanh"}


@dataclass(frozen=True)
class LowRankEdit:
    """``h ← h + act(h Wᵀ + b) P`` at the positions ``rule`` selects (client-side description of an edit).

    ``weight``/``proj`` are ``rank × d_model``, ``bias`` is ``rank``; any scale α is folded into ``proj``.
    ``rule`` and ``k`` are a :data:`~commandv_interp.types.PositionRule` and its ``first_last`` width.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    proj: torch.Tensor
    act: str
    rule: str
    k: int | None = None

    def __post_init__(self) -> None:
        if self.act not in _ACT:
            raise ValueError(f"act={self.act!r} cannot run in a remote trace; use one of {sorted(_ACT)!r}")
        if self.weight.shape != self.proj.shape or self.bias.shape != self.weight.shape[:1]:
            raise ValueError(f"low-rank edit shapes disagree: weight {tuple(self.weight.shape)}, bias "
                             f"{tuple(self.bias.shape)}, proj {tuple(self.proj.shape)}")

    @property
    def acts_on_decode(self) -> bool:
        return self.rule.endswith("+decode")

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(W, b, P)`` as contiguous float32 CPU tensors, the form shipped in a request."""
        return tuple(t.detach().to("cpu", torch.float32).contiguous() for t in (self.weight, self.bias, self.proj))


@no_type_check
def hidden_of(output):
    """The hidden states of a block output (a tensor, or a tuple whose first item is one)."""
    return output if isinstance(output, torch.Tensor) else output[0]


@no_type_check
def with_hidden(output, hidden):
    """``output`` with its hidden states replaced (same structure)."""
    return hidden if isinstance(output, torch.Tensor) else (hidden,) + tuple(output[1:])


@no_type_check
def last_rows(hidden, index):
    """``hidden[b, index[b]]``, detached, float32, on CPU: the compact vectors a remote read sends back."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, index.to(hidden.device)].detach().to("cpu", torch.float32)


@no_type_check
def apply_low_rank(hidden, select, weight, bias, proj, act):
    """``hidden`` with ``act(h Wᵀ + b) P`` added at the positions ``select`` marks (None: every position).

    Computed in float32 and rounded once to the hidden states' dtype, like the local paste.
    """
    if select is None:
        select = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    select = select.to(hidden.device)
    if not bool(select.any()):
        return hidden
    h = hidden[select]
    dev = hidden.device
    z = h.float() @ weight.to(dev).T + bias.to(dev)
    if act == "relu":
        z = torch.relu(z)
    elif act == "gelu":
        z = torch.nn.functional.gelu(z)
    elif act == "silu":
        z = torch.nn.functional.silu(z)
    elif act == "tanh":
        z = torch.tanh(z)
    out = hidden.clone()
    out[select] = (h.to(torch.promote_types(h.dtype, torch.float32)) + z @ proj.to(dev)).to(hidden.dtype)
    return out


@no_type_check
def apply_edits(hidden, entries, step):
    """Apply ``(select, W, b, P, act, on_decode)`` entries in order: ``select`` on the prompt pass (``step``
    0), every position of a decode step for entries with ``on_decode``."""
    for select, weight, bias, proj, act, on_decode in entries:
        if int(step) == 0:
            hidden = apply_low_rank(hidden, select, weight, bias, proj, act)
        elif on_decode:
            hidden = apply_low_rank(hidden, None, weight, bias, proj, act)
    return hidden


@no_type_check
def edit_blocks(envoys, plan, step):
    """Inside a trace: replace each planned block's output by its edited version, in layer order."""
    for layer in sorted(plan):
        output = envoys[layer].output
        envoys[layer].output = with_hidden(output, apply_edits(hidden_of(output), plan[layer], step))


@no_type_check
def read_blocks(envoys, order, plan, keep, index):
    """Inside a trace: visit the blocks in ``order``, replacing each planned block's output by its edited version,
    and return, for the layers in ``keep``, the rows at ``index`` (:func:`last_rows`; ``None``: the whole sequence),
    detached, float32, on CPU.

    A function rather than trace-body statements: the full hidden states are bound only in its frame, so nothing of
    the sequence outlives the call (names a trace body binds live on in its scope).
    """
    out = {}
    for layer in order:
        output = envoys[layer].output
        hidden = hidden_of(output)
        if layer in plan:
            hidden = apply_edits(hidden, plan[layer], 0)
            envoys[layer].output = with_hidden(output, hidden)
        if layer in keep:
            out[layer] = last_rows(hidden, index) if index is not None else hidden.detach().to("cpu", torch.float32)
    return out
