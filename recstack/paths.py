"""Where each stage writes its artifacts, so the next stage reads them from the same place.

One pipeline run for one dataset lives under ``runs/<dataset>/``::

    data/          interactions, users, items, train/valid/test parquet + dataset.json   (recstack.data)
    workflow/      the fitted Workflow (workflow.json + .npy arrays)                     (recstack.workflows)
    features/      user_features / item_features / user_history parquet for Feast        (recstack.workflows)
    feature_repo/  the generated Feast repository, registry and SQLite online store      (recstack.features)
    models/        two_tower/ and dlrm/: state dict + config.json + ONNX exports          (recstack.models)
    index/         items.faiss + index.json                                              (recstack.retrieval)
    reports/       evaluation tables (JSON) and PNG plots                                (recstack.evaluation)
    items/         live.db: items added after training (raw features)                    (recstack.features.live_items)
    events/        log.db: the event log (SQLite backend) and consumer locks              (recstack.events)

The Triton model repository goes to ``triton_repo/<dataset>/`` (recstack.ensembles).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def project_root() -> Path:
    """The folder that holds ``runs/`` and ``triton_repo/``: $RECSTACK_HOME, else the current folder."""
    return Path(os.environ.get("RECSTACK_HOME", ".")).resolve()


def cache_dir() -> Path:
    """Downloaded datasets: $RECSTACK_CACHE, else ~/.cache/recstack (outside git)."""
    return Path(os.environ.get("RECSTACK_CACHE", Path.home() / ".cache" / "recstack")).resolve()


@dataclass(frozen=True)
class RunPaths:
    """Artifact folders of one pipeline run (see the module docstring)."""

    root: Path
    triton_repo: Path

    @classmethod
    def for_dataset(cls, dataset: str, home: Path | None = None) -> "RunPaths":
        home = (home or project_root()).resolve()
        return cls(root=home / "runs" / dataset, triton_repo=home / "triton_repo" / dataset)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def workflow(self) -> Path:
        return self.root / "workflow"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def feature_repo(self) -> Path:
        return self.root / "feature_repo"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def reports(self) -> Path:
        return self.root / "reports"
