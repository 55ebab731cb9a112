"""Which recipient layer each donor layer maps to, by relative depth or by similarity."""

from commandv_interp.correspondence.layer_map import (LayerMap, MatchMethod, match_layers, monotone_alignment,
                                                      relative_depth, relative_depth_map, similarity_matrix)
from commandv_interp.correspondence.similarity import (METRICS, Metric, debiased_cka, linear_cka, mutual_knn,
                                                       regression_r2, similarity_fn)

__all__ = ["LayerMap", "METRICS", "MatchMethod", "Metric", "debiased_cka", "linear_cka", "match_layers",
           "monotone_alignment", "mutual_knn", "regression_r2", "relative_depth", "relative_depth_map",
           "similarity_fn", "similarity_matrix"]
