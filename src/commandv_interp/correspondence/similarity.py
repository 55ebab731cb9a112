"""Consumes two paired activation matrices, produces a similarity score.

Every metric takes ``X: n × d_donor`` and ``Y: n × d_recipient`` whose rows are the same prompts and
returns a float; higher means more similar. All computed in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch

from commandv_interp.types import Float, Tensor

__all__ = ["Metric", "METRICS", "linear_cka", "debiased_cka", "regression_r2", "mutual_knn", "similarity_fn"]

Metric = Literal["cka", "debiased_cka", "r2", "mutual_knn"]
METRICS: tuple[str, ...] = get_args(Metric)


def _centered_gram(x: Tensor) -> Tensor:
    x = x.double()
    x = x - x.mean(dim=0, keepdim=True)
    return x @ x.T


def linear_cka(x: Float[Tensor, "n d_donor"], y: Float[Tensor, "n d_recipient"]) -> float:
    """Linear CKA (Kornblith et al. 2019): ``⟨K_c, L_c⟩ / (‖K_c‖ ‖L_c‖)`` with centered Gram matrices.

    Invariant to rotations and isotropic scaling of either space.

    >>> x = torch.randn(20, 5); q, _ = torch.linalg.qr(torch.randn(5, 5))
    >>> round(linear_cka(x, 3 * x @ q), 6)
    1.0
    """
    k, l = _centered_gram(x), _centered_gram(y)
    denom = k.norm() * l.norm()
    return float((k * l).sum() / denom) if denom > 0 else 0.0


def _unbiased_hsic(k: Tensor, l: Tensor) -> Tensor:
    n = k.shape[0]
    k = k.clone(); l = l.clone()
    k.fill_diagonal_(0); l.fill_diagonal_(0)
    ones = torch.ones(n, dtype=k.dtype)
    term = (k * l).sum() + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2)) \
        - 2 * (ones @ k @ l @ ones) / (n - 2)
    return term / (n * (n - 3))


def debiased_cka(x: Float[Tensor, "n d_donor"], y: Float[Tensor, "n d_recipient"]) -> float:
    """CKA with the unbiased HSIC estimator (Song et al. 2012), less inflated when ``n`` is small vs ``d``."""
    if x.shape[0] < 4:
        raise ValueError(f"debiased CKA needs at least 4 prompts, got {x.shape[0]}")
    k, l = x.double() @ x.double().T, y.double() @ y.double().T
    kl, kk, ll = _unbiased_hsic(k, l), _unbiased_hsic(k, k), _unbiased_hsic(l, l)
    denom = (kk * ll).clamp_min(0).sqrt()
    return float(kl / denom) if denom > 0 else 0.0


def regression_r2(x: Float[Tensor, "n d_donor"], y: Float[Tensor, "n d_recipient"], ridge: float = 1e-3) -> float:
    """Held-out R² of a centered ridge regression, averaged over both directions (even rows fit, odd rows score)."""
    def one_way(a: Tensor, b: Tensor) -> float:
        a, b = a.double(), b.double()
        tr, te = slice(0, None, 2), slice(1, None, 2)
        ma, mb = a[tr].mean(0), b[tr].mean(0)
        a0, b0 = a[tr] - ma, b[tr] - mb
        lam = ridge * (a0.pow(2).sum() / a0.shape[1])
        w = torch.linalg.solve(a0.T @ a0 + lam * torch.eye(a0.shape[1], dtype=a0.dtype), a0.T @ b0)
        pred = (a[te] - ma) @ w + mb
        ss_res = (pred - b[te]).pow(2).sum()
        ss_tot = (b[te] - b[te].mean(0)).pow(2).sum()
        return float(1 - ss_res / ss_tot) if ss_tot > 0 else 0.0
    return 0.5 * (one_way(x, y) + one_way(y, x))


def mutual_knn(x: Float[Tensor, "n d_donor"], y: Float[Tensor, "n d_recipient"], k: int = 10) -> float:
    """Mean fraction of shared cosine k-nearest neighbours of each prompt in the two spaces (Huh et al. 2024)."""
    n = x.shape[0]
    k = min(k, n - 1)
    if k < 1:
        raise ValueError(f"mutual k-NN needs at least 2 prompts, got {n}")

    def knn(a: Tensor) -> Tensor:
        a = torch.nn.functional.normalize(a.double() - a.double().mean(0), dim=1)
        sim = a @ a.T
        sim.fill_diagonal_(-float("inf"))
        return sim.topk(k, dim=1).indices

    nx, ny = knn(x), knn(y)
    hits = (nx.unsqueeze(2) == ny.unsqueeze(1)).any(dim=2).double().sum(dim=1)
    return float((hits / k).mean())


_FNS: dict[str, Callable[[Tensor, Tensor], float]] = {
    "cka": linear_cka, "debiased_cka": debiased_cka, "r2": regression_r2, "mutual_knn": mutual_knn,
}


def similarity_fn(metric: str) -> Callable[[Tensor, Tensor], float]:
    """The function for a metric name (one of :data:`METRICS`)."""
    if metric not in _FNS:
        raise ValueError(f"metric={metric!r} is not one of {list(METRICS)!r}")
    return _FNS[metric]
