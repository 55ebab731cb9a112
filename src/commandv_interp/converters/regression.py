"""Consumes paired matrices ``X → Y``, produces closed-form linear fits.

All fits go through one SVD of ``X`` (float64), so a fit of rank ``k ≤ n`` is returned factored:
``W = left @ right`` with ``left: d_out × k`` and ``right: k × d_in``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from commandv_interp.types import Float, Int, Tensor

__all__ = ["FitResult", "fit_held_out", "fit_linear", "holdout_split", "scores", "DEFAULT_RIDGE_GRID"]

DEFAULT_RIDGE_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
"""λ candidates as multiples of the mean eigenvalue of ``XᵀX`` (a constant λ does not scale with N)."""
GRID_EXTENSIONS = 4  # at most this many decades are added past an edge of the grid where the held-out error is least


@dataclass(frozen=True)
class FitResult:
    """``y ≈ x @ (left @ right)ᵀ + bias``; ``ridge`` is the relative λ used (0 for none)."""

    left: Float[Tensor, "d_out k"]
    right: Float[Tensor, "k d_in"] | None
    bias: Float[Tensor, " d_out"] | None
    ridge: float = 0.0

    def predict(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_out"]:
        x = x.to(self.left.dtype)
        h = x @ self.right.T if self.right is not None else x
        y = h @ self.left.T
        return y if self.bias is None else y + self.bias


def holdout_split(n: int, fraction: float, seed: int = 0) -> tuple[Int[Tensor, " n_train"], Int[Tensor, " n_test"]]:
    """A seeded train/test split of ``n`` rows with ``ceil(n·fraction)`` test rows."""
    n_test = math.ceil(n * fraction)
    if n_test < 1 or n - n_test < 2:
        raise ValueError(f"cannot hold out {fraction!r} of {n} prompts; profile at least 3 prompts")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _factored(y: Tensor, u: Tensor, gain: Tensor, vh: Tensor, d_in: int, d_out: int) -> tuple[Tensor, Tensor | None]:
    """``W = yᵀ U diag(gain) Vᴴ``, kept factored (``d_out × k`` and ``k × d_in``) when that stores fewer numbers
    than the dense ``d_out × d_in``: ``k (d_in + d_out) < d_in d_out``."""
    left = (y.T @ u) * gain
    k = vh.shape[0]
    if k * (d_in + d_out) < d_in * d_out:
        return left, vh
    return left @ vh, None


def _svd(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    cutoff = max(x.shape) * torch.finfo(x.dtype).eps * (s.max() if s.numel() else 0)
    keep = s > cutoff
    return u[:, keep], s[keep], vh[keep]


def _ridge(x: Tensor, y: Tensor, lam_rel: float, svd: tuple[Tensor, Tensor, Tensor] | None = None,
           ) -> tuple[Tensor, Tensor | None]:
    u, s, vh = svd if svd is not None else _svd(x)
    lam = lam_rel * float((s ** 2).sum()) / x.shape[1]
    gain = (1.0 / s) if lam == 0 else s / (s ** 2 + lam)
    return _factored(y, u, gain, vh, x.shape[1], y.shape[1])


def _procrustes(x: Tensor, y: Tensor) -> Tensor:
    u, sig, vh = torch.linalg.svd(x.T @ y, full_matrices=False)  # (d_in × k)(k)(k × d_out)
    scale = sig.sum() / x.pow(2).sum().clamp_min(1e-30)
    return scale * (u @ vh).T


def fit_linear(
    x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"], method: str,
    ridge_grid: tuple[float, ...] | None = None, select_on: tuple[Tensor, Tensor] | None = None,
    fixed_ridge: float | None = None,
) -> FitResult:
    """Fit ``y ≈ f(x)`` with one of ``pinv | ridge | affine | procrustes``.

    λ for ``ridge``/``affine`` is ``fixed_ridge`` if given, else the grid value with the lowest relative
    error on ``select_on`` (held-out ``(x, y)``), else the grid's middle value. When the lowest error sits at an edge
    of the grid, the grid is extended past that edge a decade at a time (at most ``GRID_EXTENSIONS`` decades) while
    the error keeps falling.
    """
    x, y = x.double(), y.double()
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"paired rows differ: {x.shape[0]} vs {y.shape[0]}")
    if method == "pinv":
        left, right = _ridge(x, y, 0.0)
        return FitResult(left, right, None, 0.0)
    if method == "procrustes":
        mx, my = x.mean(0), y.mean(0)
        w = _procrustes(x - mx, y - my)
        return FitResult(w, None, my - mx @ w.T, 0.0)
    if method not in ("ridge", "affine"):
        raise ValueError(f"unknown fit method {method!r}")
    center = method == "affine"
    grid = tuple(ridge_grid) if ridge_grid is not None else DEFAULT_RIDGE_GRID
    bad = [lam for lam in grid + ((fixed_ridge,) if fixed_ridge is not None else ())
           if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0)]
    if bad or not grid:
        raise ValueError(f"ridge values must be finite and >= 0 (multiples of the mean eigenvalue of XᵀX), got "
                         f"{bad or 'an empty grid'}; pass e.g. ridge_grid=(1e-3, 1e-2, 1e-1)")
    mx = x.mean(0) if center else torch.zeros(x.shape[1], dtype=x.dtype)
    my = y.mean(0) if center else torch.zeros(y.shape[1], dtype=y.dtype)
    svd = _svd(x - mx)  # one SVD serves every λ of the grid

    def fit_at(lam: float) -> FitResult:
        left, right = _ridge(x - mx, y - my, lam, svd)
        bias = (my - (mx @ right.T if right is not None else mx) @ left.T) if center else None
        return FitResult(left, right, bias, lam)

    if fixed_ridge is not None:
        return fit_at(fixed_ridge)
    if select_on is None or len(grid) == 1:
        return fit_at(sorted(grid)[len(grid) // 2])
    errors = {lam: scores(fit_at(lam), *select_on)["rel_mse"] for lam in grid}
    best = min(errors, key=errors.__getitem__)
    # a choice at an edge of the grid is no choice: extend the grid past it while the held-out error still falls
    for edge, step in ((max(grid), 10.0), (min(grid), 0.1)):
        while best == edge and len(errors) < len(grid) + GRID_EXTENSIONS and edge * step > 0:
            edge = edge * step if edge > 0 else 0.0
            errors[edge] = scores(fit_at(edge), *select_on)["rel_mse"]
            if errors[edge] < errors[best]:
                best = edge
    return fit_at(best)


def scores(fit: FitResult, x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"]) -> dict[str, float]:
    """Held-out R² (about the column means), relative MSE ``‖ŷ − y‖²/‖y‖²`` and mean row cosine."""
    y = y.double()
    pred = fit.predict(x.double())
    ss_res = (pred - y).pow(2).sum()
    ss_tot = (y - y.mean(0)).pow(2).sum()
    cos = torch.nn.functional.cosine_similarity(pred, y, dim=1).mean()
    return {"r2": float(1 - ss_res / ss_tot) if ss_tot > 0 else float("nan"),
            "rel_mse": float(ss_res / y.pow(2).sum().clamp_min(1e-30)), "cosine": float(cos)}


def fit_held_out(
    x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"], method: str, train: Int[Tensor, " n_train"],
    test: Int[Tensor, " n_test"], ridge_grid: tuple[float, ...] | None = None,
) -> tuple[FitResult, dict[str, float], Float[Tensor, "n_test d_out"]]:
    """Pick λ on the held-out rows, score there, then refit on all rows with that λ.

    Returns:
        The fit on all rows, its held-out report (:func:`scores` plus ``ridge``) and the held-out predictions of
        the fit on the training rows.
    """
    trial = fit_linear(x[train], y[train], method, ridge_grid, select_on=(x[test], y[test]))
    report = scores(trial, x[test], y[test]) | {"ridge": trial.ridge}
    return fit_linear(x, y, method, fixed_ridge=trial.ridge), report, trial.predict(x[test])
