"""Consumes two profiles, a :class:`LayerMap` and (for ``interface``) the donor's adapter,
produces :class:`Converters`: the one fitting entry over every profile-based method.

Methods: ``pinv`` (the paper's), ``ridge``, ``affine``, ``procrustes`` map all dimensions of each layer pair
(:mod:`~commandv_interp.converters.linear`); ``interface`` maps only the adapter's read and write directions
(:mod:`~commandv_interp.converters.interface`). Fits that need the models themselves (the chained fit) live in
:mod:`~commandv_interp.converters.chained`.
"""

from __future__ import annotations

from commandv_interp.adapters import Adapter
from commandv_interp.converters.artifact import CONVERTER_METHODS, ConverterMethod, Converters, check_fit_inputs
from commandv_interp.converters.interface import fit_interface_converters
from commandv_interp.converters.linear import fit_linear_converters
from commandv_interp.correspondence import LayerMap
from commandv_interp.profiles import ActivationProfile
from commandv_interp.types import check_choice

__all__ = ["fit_converters"]


def fit_converters(
    donor_profile: ActivationProfile,
    recipient_profile: ActivationProfile,
    layer_map: LayerMap,
    method: ConverterMethod = "pinv",
    adapter: Adapter | None = None,
    holdout: float = 0.2,
    ridge_grid: tuple[float, ...] | None = None,
) -> Converters:
    """Fit recipient→donor and donor→recipient converters for every mapped layer pair.

    Args:
        donor_profile, recipient_profile: profiles over the same prompts (fingerprints must match).
        layer_map: which recipient layer each donor layer maps to.
        method: ``pinv`` (paper-exact ``pinv(A_R) A_D`` / ``pinv(A_D) A_R``, no centering), ``ridge``
            (regularized least squares, λ from held-out error), ``affine`` (centered, with bias), ``procrustes``
            (orthogonal after zero-padding, centered, with scale and bias) or ``interface`` (the adapter's read and
            write directions only; needs ``adapter``).
        adapter: the donor adapter the converters will paste; required by ``interface`` (the result is tied to it),
            ignored otherwise.
        holdout: fraction of prompts held out to score each fit and pick λ; the converters are refit on all prompts.
        ridge_grid: λ candidates as multiples of the mean eigenvalue of ``XᵀX`` (default: a log grid).

    Returns:
        :class:`Converters` whose ``fit_scores`` hold held-out R², relative MSE and cosine per direction.

    Example:
        >>> conv = fit_converters(p_donor, p_recipient, layer_map, method="ridge")  # doctest: +SKIP
    """
    check_choice("method", method, CONVERTER_METHODS)
    check_fit_inputs(donor_profile, recipient_profile, layer_map, method, adapter, ridge_grid)
    if method == "interface":
        if adapter is None:
            raise ValueError("method='interface' fits the adapter's read and write directions; pass adapter=<the "
                             "donor adapter you will paste>")
        return fit_interface_converters(donor_profile, recipient_profile, layer_map, adapter, holdout, ridge_grid)
    return fit_linear_converters(donor_profile, recipient_profile, layer_map, method, holdout, ridge_grid)
