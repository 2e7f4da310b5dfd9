"""Serving graph (``>>``-chained ops) and its export as a Triton ensemble model repository."""

from recstack.ensembles.graph import (
    ENSEMBLE_INPUTS,
    ENSEMBLE_NAME,
    ENSEMBLE_OUTPUTS,
    EmbedUser,
    FilterTopN,
    QueryIndex,
    QueryItemFeatures,
    QueryUserFeatures,
    Rank,
    ServingGraph,
    ServingOp,
    export_ensemble,
    recommendation_graph,
    run_in_process,
)

__all__ = [
    "ENSEMBLE_INPUTS", "ENSEMBLE_NAME", "ENSEMBLE_OUTPUTS", "EmbedUser", "FilterTopN", "QueryIndex",
    "QueryItemFeatures", "QueryUserFeatures", "Rank", "ServingGraph", "ServingOp", "export_ensemble",
    "recommendation_graph", "run_in_process",
]
