"""Consumes two profiles and a :class:`LayerMap`, produces :class:`Converters` fitted over
all dimensions of each mapped layer pair (``pinv``, ``ridge``, ``affine``, ``procrustes``).
"""

from __future__ import annotations

from commandv_interp.converters.artifact import Converters, LayerConverter, LinearConverter, provenance_extra
from commandv_interp.converters.regression import fit_held_out, holdout_split
from commandv_interp.correspondence import LayerMap
from commandv_interp.profiles import ActivationProfile

__all__ = ["fit_linear_converters", "LINEAR_METHODS"]

LINEAR_METHODS = ("pinv", "ridge", "affine", "procrustes")


def fit_linear_converters(
    donor_profile: ActivationProfile,
    recipient_profile: ActivationProfile,
    layer_map: LayerMap,
    method: str = "pinv",
    holdout: float = 0.2,
    ridge_grid: tuple[float, ...] | None = None,
) -> Converters:
    """The ``pinv``/``ridge``/``affine``/``procrustes`` branch of
    :func:`~commandv_interp.converters.fit_converters` (see there for the arguments).

    Returns:
        :class:`Converters` whose ``fit_scores`` hold held-out R² and relative MSE per direction.
    """
    if method not in LINEAR_METHODS:
        raise ValueError(f"method={method!r} is not one of {list(LINEAR_METHODS)!r}")
    donor_profile.check_paired_with(recipient_profile)
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout!r}")
    train, test = holdout_split(donor_profile.n_prompts, holdout)
    out = []
    for donor_layer, recipient_layer in layer_map.pairs:
        a_d, a_r = donor_profile[donor_layer].double(), recipient_profile[recipient_layer].double()
        fits, fit_scores = {}, {}
        for direction, x, y in (("to_donor", a_r, a_d), ("to_recipient", a_d, a_r)):
            fits[direction], fit_scores[direction], _ = fit_held_out(x, y, method, train, test, ridge_grid)
        out.append(LayerConverter(donor_layer, recipient_layer, LinearConverter.from_fit(fits["to_donor"]),
                                  LinearConverter.from_fit(fits["to_recipient"]), fit_scores))
    return Converters(tuple(out), method, donor_profile.model_name, recipient_profile.model_name,
                      donor_profile.config_hash, recipient_profile.config_hash, donor_profile.d_model,
                      recipient_profile.d_model, donor_profile.prompts_fingerprint,
                      {"layer_map_method": layer_map.method, "n_prompts": donor_profile.n_prompts}
                      | provenance_extra(donor_profile, recipient_profile))
