"""recstack.evaluation: full-catalogue leave-one-out metrics and run reports (shared/DATA.md protocol).

Imported lazily: the CLI registers `recstack evaluate` without importing torch.
"""

from __future__ import annotations

from recstack.lazy import lazy_exports

_EXPORTS = {
    "evaluate_run": "evaluate", "format_report": "evaluate", "format_table": "evaluate", "write_report": "evaluate",
    "RankingAccumulator": "metrics", "coverage": "metrics", "evaluate_scores": "metrics", "exclude_seen": "metrics",
    "metrics_from_ranks": "metrics", "ranks_from_topk": "metrics", "target_ranks": "metrics", "top_k": "metrics",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
