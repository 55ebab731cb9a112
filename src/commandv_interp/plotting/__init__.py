"""Consumes the analysis DataFrames (never models), produces matplotlib figures saved as PNG
and PDF.

Every figure puts one quantity on each axis with a human label, keeps its legend off the data (beside or below
the panels), draws rates on a fixed [0, 1] axis with the reference rates (recipient base, donor + adapter,
recipient finetune) as horizontal lines, and shows categorical axes as points or bars, never joined by lines.

- :mod:`.style`: labels and units, the rate axis, the reference rates (:func:`reference_rates`) and their line
  styles, legends, :func:`save_figure`;
- :mod:`.rates`: :func:`plot_dose_response` (rates against a numeric setting: α, profile size N, with bootstrap CI
  bands) and :func:`plot_comparison` (against a categorical setting: converter method, layer map, as points with
  CIs);
- :mod:`.layers`: :func:`plot_similarity` (the donor × recipient similarity matrix, annotated, with the chosen map
  boxed and a collapsed map flagged in the title), :func:`plot_fidelity` (per-layer fidelity, one panel per unit:
  cosines, norm ratios, R², errors) and :func:`plot_attribution` (bars per pasted layer subset and null baselines,
  rates on [0, 1]);
- :mod:`.polish`: :func:`plot_polish_change` (what the polish changed per recipient layer, and the final edit's
  attribution).
"""

from commandv_interp.plotting.layers import plot_attribution, plot_fidelity, plot_similarity
from commandv_interp.plotting.polish import plot_polish_change
from commandv_interp.plotting.rates import plot_comparison, plot_dose_response
from commandv_interp.plotting.style import RATE_METRICS, REFERENCES, label, reference_rates, save_figure
from commandv_interp.plotting.style import RATE_MARGIN  # noqa: F401  (not in __all__; tests read plotting.RATE_MARGIN)

__all__ = ["plot_dose_response", "plot_comparison", "plot_similarity", "plot_fidelity", "plot_attribution",
           "plot_polish_change", "reference_rates", "save_figure", "label", "RATE_METRICS", "REFERENCES"]
