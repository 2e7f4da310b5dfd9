"""recstack.models: two-tower retrieval and DLRM ranking, built from the workflow schema's tags.

    from recstack.models import train_all, load_two_tower, FeatureLayout
    summary = train_all(RunPaths.for_dataset("ml-100k"), device="auto")

Layout of the inputs: :mod:`recstack.models.layout`; artifacts: :mod:`recstack.models.export`.
"""

from recstack.models.data import TrainingData, load_training_data
from recstack.models.dlrm import DLRM, DLRMConfig, DenseArch, InteractionArch, OverArch, SparseArch
from recstack.models.export import load_dlrm, load_two_tower, save_dlrm, save_two_tower
from recstack.models.layout import FeatureLayout
from recstack.models.train import resolve_device, train_all, train_dlrm, train_two_tower
from recstack.models.two_tower import ItemTower, TwoTower, TwoTowerConfig, UserTower, in_batch_softmax_loss

__all__ = [
    "DLRM", "DLRMConfig", "DenseArch", "FeatureLayout", "InteractionArch", "ItemTower", "OverArch", "SparseArch",
    "TrainingData", "TwoTower", "TwoTowerConfig", "UserTower", "in_batch_softmax_loss", "load_dlrm",
    "load_training_data", "load_two_tower", "resolve_device", "save_dlrm", "save_two_tower", "train_all",
    "train_dlrm", "train_two_tower",
]
