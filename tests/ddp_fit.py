"""Worker of tests/test_training.py's DDP test: fit the two-tower and the DLRM on the synthetic data of
test_models.py, in one process (``python tests/ddp_fit.py OUT``) or under ``torchrun --nproc-per-node 2``
(gloo on CPU), and write rank 0's per-epoch losses and final weights to OUT (JSON)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from test_models import L, make_schema, synthetic_data

from recstack.models.distributed import distributed_from_env
from recstack.models.dlrm import DLRMConfig
from recstack.models.dlrm_training import fit_dlrm
from recstack.models.layout import FeatureLayout
from recstack.models.two_tower import TwoTowerConfig
from recstack.models.two_tower_training import fit_two_tower


def main(out: str) -> None:
    torch.set_num_threads(1)
    ddp = distributed_from_env()
    data = synthetic_data(FeatureLayout.from_schema(make_schema(), history_length=L))
    tt_cfg = TwoTowerConfig(embedding_dim=16, output_dim=16, hidden=[32], uniform_negatives=16, dropout=0.0,
                            id_dropout=0.0)  # random draws differ per rank, like dropout
    tt, tt_hist = fit_two_tower(data, tt_cfg, epochs=2, batch_size=64, lr=5e-3, select=False, progress=False,
                                ddp=ddp)
    dl_cfg = DLRMConfig(embedding_dim=8, dense_hidden=[8], over_hidden=[16], dropout=0.0)
    dl, dl_hist = fit_dlrm(data, dl_cfg, epochs=2, batch_size=100, lr=5e-3, loss="softmax", negatives=4,
                           select=False, progress=False, ddp=ddp)
    if ddp.is_main:
        Path(out).write_text(json.dumps({
            "world": ddp.world,
            "two_tower_loss": [h["loss"] for h in tt_hist["history"]],
            "dlrm_loss": [h["loss"] for h in dl_hist["history"]],
            "two_tower": {k: v.flatten().tolist() for k, v in tt.state_dict().items()},
            "dlrm": {k: v.flatten().tolist() for k, v in dl.state_dict().items()}}))


if __name__ == "__main__":
    main(sys.argv[1])
