"""recstack.evaluation: full-catalogue leave-one-out metrics and run reports (shared/DATA.md protocol)."""

from recstack.evaluation.evaluate import evaluate_run, format_report, format_table, write_report
from recstack.evaluation.metrics import (RankingAccumulator, coverage, evaluate_scores, exclude_seen,
                                         metrics_from_ranks, ranks_from_topk, target_ranks, top_k)

__all__ = ["RankingAccumulator", "coverage", "evaluate_run", "evaluate_scores", "exclude_seen", "format_report", "format_table",
           "metrics_from_ranks", "ranks_from_topk", "target_ranks", "top_k", "write_report"]
