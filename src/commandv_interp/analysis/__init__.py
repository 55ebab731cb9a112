"""Per-layer faithfulness of a pasted behavior — converter fidelity, state and delta fidelity,
downstream effect fidelity, causal layer attribution and null baselines — as tidy pandas DataFrames.

Layer-pair tables have columns ``donor_layer, recipient_layer, metric, value, split``; attribution and baseline
tables have ``condition, layers, n_pairs, metric, value, split``.
"""

from commandv_interp.analysis.attribution import (
    ATTRIBUTION_MODES,
    BehaviorScore,
    agreement_attribution,
    layer_attribution,
    layer_subsets,
    null_baselines,
    random_delta_paste,
    shuffled_converters,
)
from commandv_interp.analysis.capture import last_logits, last_states, recording
from commandv_interp.analysis.downstream import downstream_fidelity, logit_difference
from commandv_interp.analysis.fidelity import (
    contrast_fidelity,
    converter_fidelity,
    paste_states,
    similarity_frame,
    state_delta_fidelity,
)
from commandv_interp.analysis.polish_change import edit_attribution, final_edit_analysis, polish_change
from commandv_interp.analysis.study import Study, run_study
from commandv_interp.metrics import (
    effective_rank,
    kl_divergence,
    mean_cosine,
    norm_ratio,
    r2,
    relative_error,
    total_variation,
)

__all__ = [
    "agreement_attribution", "contrast_fidelity", "edit_attribution", "final_edit_analysis", "polish_change",
    "Study", "run_study",
    "ATTRIBUTION_MODES", "BehaviorScore", "converter_fidelity", "downstream_fidelity", "effective_rank",
    "kl_divergence", "last_logits", "last_states", "layer_attribution", "layer_subsets", "logit_difference",
    "mean_cosine", "norm_ratio", "null_baselines", "paste_states", "r2", "random_delta_paste", "recording",
    "relative_error", "shuffled_converters", "similarity_frame", "state_delta_fidelity", "total_variation",
]
