"""Linear maps between the donor's and the recipient's residual streams, per mapped layer pair.

- :mod:`.artifact`: :class:`Converters` (the artifact, its checks, safetensors I/O).
- :mod:`.regression`: closed-form ridge/pinv/procrustes fits on paired matrices.
- :mod:`.linear`, :mod:`.interface`, :mod:`.fit`: fits from profiles; :func:`fit_converters` is the entry.
- :mod:`.transport`: the pasted delta a converter pair carries for an adapter.
- :mod:`.chained`: the chained fit, layer after layer under the paste of the layers below.
- :mod:`.alpha`: the norm-matched paste scale.
"""

from commandv_interp.converters.alpha import delta_norm_ratios, norm_matched_alpha
from commandv_interp.converters.artifact import (CONVERTER_METHODS, ConverterMethod, Converters, LayerConverter,
                                                 LinearConverter)
from commandv_interp.converters.chained import fit_chained_converters
from commandv_interp.converters.fit import fit_converters
from commandv_interp.converters.interface import MAX_STRETCH
from commandv_interp.converters.transport import PastedDelta, pasted_deltas, pasted_edits

__all__ = ["CONVERTER_METHODS", "ConverterMethod", "Converters", "LayerConverter", "LinearConverter", "MAX_STRETCH",
           "PastedDelta", "delta_norm_ratios", "fit_chained_converters", "fit_converters", "norm_matched_alpha",
           "pasted_deltas", "pasted_edits"]
