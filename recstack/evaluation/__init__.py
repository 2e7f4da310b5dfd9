"""recstack.evaluation: full-catalogue leave-one-out metrics and run reports (shared/DATA.md protocol).

Imported lazily: the CLI registers `recstack evaluate` without importing torch.
"""

from __future__ import annotations

from recstack.lazy import lazy_exports

_EXPORTS = {
    "evaluate_run": "evaluate", "format_table": "evaluate", "write_report": "evaluate",
    "evaluate_scores": "metrics", "ranks_from_topk": "metrics",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
