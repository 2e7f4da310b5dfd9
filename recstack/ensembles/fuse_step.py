"""The score-fusion step that follows a DLRM served as its own (onnxruntime-backend) model.

In the python-backend chain, :class:`recstack.ensembles.steps.Rank` runs the DLRM and fuses its
logits with the retrieval scores in one step. When the DLRM is a Triton onnxruntime model
(``recstack export --backend onnxruntime``) it returns the raw logits, and this step does the
fusion: the same :func:`recstack.models.fusion.fuse_scores` with the same weights
(``models/dlrm/config.json``, ``"fusion"``), so both exports rank alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recstack.errors import InputError

LOGITS = "dlrm_logits"
"""The ensemble tensor carrying the DLRM's output ``score`` [B, K] to this step."""


class FuseScores:
    """``dlrm_logits`` float32 [B, K] + ``retrieval_scores`` float32 [B, K] -> ``rank_scores`` float32
    [B, K] = ``dlrm_weight * logit + retrieval_weight * retrieval_score`` (-inf where the retrieval
    score is -inf: padding)."""

    def __init__(self, model_dir: str):
        from recstack.models.fusion import read_fusion

        self.fusion = read_fusion(Path(model_dir))

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from recstack.models.fusion import fuse_scores

        arrays = {}
        for name in (LOGITS, "retrieval_scores"):
            if name not in inputs:
                raise InputError(f"input {name!r} is missing")
            array = np.asarray(inputs[name])
            if array.dtype != np.float32 or array.ndim != 2:
                raise InputError(f"input {name!r}: expected float32 [batch, K], got {array.dtype.name} "
                                 f"{list(array.shape)}")
            arrays[name] = array
        fused = fuse_scores(arrays[LOGITS], arrays["retrieval_scores"], self.fusion)
        return {"rank_scores": np.ascontiguousarray(fused, dtype=np.float32)}
