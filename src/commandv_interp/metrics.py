"""Consumes tensors, produces scalar agreement measures (R², cosine, norm ratios, KL, effective rank).

All comparisons are row-wise (one row per prompt) and averaged, in float64:

- ``r2(pred, actual)``: ``1 − Σ‖pred − actual‖² / Σ‖actual − mean(actual)‖²``;
- ``mean_cosine(a, b)``: mean over rows of ``⟨a, b⟩ / (‖a‖ ‖b‖)``;
- ``norm_ratio(a, b)``: mean over rows of ``‖a‖ / ‖b‖``;
- ``relative_error(a, b)``: mean over rows of ``‖a − b‖ / ‖b‖``;
- ``effective_rank(x)``: ``exp`` of the entropy of the normalized singular values of the centered ``x``
  (Roy & Vetterli, 2007);
- ``kl_divergence(p_logits, q_logits)``/``total_variation``: mean over rows of ``KL(p‖q)`` and ``½‖p − q‖₁``.

>>> import torch
>>> x = torch.randn(8, 4)
>>> round(r2(x, x), 6), round(mean_cosine(x, x), 6), round(norm_ratio(2 * x, x), 6), relative_error(x, x)
(1.0, 1.0, 2.0, 0.0)
"""

from __future__ import annotations

import torch

from commandv_interp.types import Float, Tensor

__all__ = ["r2", "mean_cosine", "norm_ratio", "relative_error", "effective_rank", "kl_divergence",
           "total_variation"]

_EPS = 1e-30


def _check(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"compared tensors must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.double(), b.double()


def r2(pred: Float[Tensor, "n d"], actual: Float[Tensor, "n d"]) -> float:
    """Coefficient of determination of ``pred`` for ``actual`` (about the column means of ``actual``)."""
    pred, actual = _check(pred, actual)
    ss_tot = (actual - actual.mean(0)).pow(2).sum()
    return float(1 - (pred - actual).pow(2).sum() / ss_tot) if ss_tot > 0 else float("nan")


def mean_cosine(a: Float[Tensor, "n d"], b: Float[Tensor, "n d"]) -> float:
    """Mean row-wise cosine similarity."""
    a, b = _check(a, b)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12).mean())


def norm_ratio(a: Float[Tensor, "n d"], b: Float[Tensor, "n d"]) -> float:
    """Mean row-wise ``‖a‖ / ‖b‖`` (widths may differ: only the row count must match)."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"norm_ratio needs the same number of rows, got {a.shape[0]} and {b.shape[0]}")
    return float((a.double().norm(dim=-1) / b.double().norm(dim=-1).clamp_min(_EPS)).mean())


def relative_error(a: Float[Tensor, "n d"], b: Float[Tensor, "n d"]) -> float:
    """Mean row-wise ``‖a − b‖ / ‖b‖``."""
    a, b = _check(a, b)
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(_EPS)).mean())


def effective_rank(x: Float[Tensor, "n d"]) -> float:
    """Entropy effective rank of the centered rows of ``x``: 1 for a line, ``k`` for ``k`` equal directions.

    >>> round(effective_rank(torch.cat([torch.eye(3), -torch.eye(3)])), 6)
    3.0
    """
    x = x.double()
    s = torch.linalg.svdvals(x - x.mean(0))
    if float(s.sum()) <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def kl_divergence(p_logits: Float[Tensor, "n vocab"], q_logits: Float[Tensor, "n vocab"]) -> float:
    """Mean ``KL(softmax(p) ‖ softmax(q))`` in nats."""
    p_logits, q_logits = _check(p_logits, q_logits)
    log_p, log_q = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def total_variation(p_logits: Float[Tensor, "n vocab"], q_logits: Float[Tensor, "n vocab"]) -> float:
    """Mean total-variation distance ``½ Σ |p − q|`` between the two softmax distributions."""
    p_logits, q_logits = _check(p_logits, q_logits)
    return float(0.5 * (p_logits.softmax(-1) - q_logits.softmax(-1)).abs().sum(-1).mean())
