"""recstack.models: two-tower retrieval and DLRM ranking, built from the workflow schema's tags.

    from recstack.models import train_all, load_two_tower, FeatureLayout
    summary = train_all(RunPaths.for_dataset("ml-100k"), device="auto")

Layout of the inputs: :mod:`recstack.models.layout`; artifacts: :mod:`recstack.models.export`;
training: :mod:`recstack.models.recipe` (``train_all``) over :mod:`~recstack.models.two_tower_training`
and :mod:`~recstack.models.dlrm_training`; scoring on a split: :mod:`recstack.models.validation`.
Names are imported lazily: serving processes that only need the layout (numpy) do not pay
for importing torch.
"""

from __future__ import annotations

from recstack.lazy import lazy_exports

_EXPORTS = {
    "TrainingData": "data", "load_training_data": "data",
    "DLRM": "dlrm", "DLRMConfig": "dlrm", "DenseArch": "dlrm", "InteractionArch": "dlrm", "OverArch": "dlrm",
    "SparseArch": "dlrm",
    "load_dlrm": "export", "load_two_tower": "export", "save_dlrm": "export", "save_two_tower": "export",
    "FeatureLayout": "layout",
    "resolve_device": "device", "train_all": "recipe", "train_dlrm": "dlrm_training",
    "train_two_tower": "two_tower_training",
    "ItemTower": "two_tower", "TwoTower": "two_tower", "TwoTowerConfig": "two_tower", "UserTower": "two_tower",
    "in_batch_softmax_loss": "two_tower",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
