"""The array path (CuPy / torch / numpy columns) equals the pandas path; checked here on numpy
arrays and CPU torch tensors (scripts/gpu_check.py runs the same on CUDA)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recstack.errors import InputError
from recstack.workflows import (AddTags, Bucketize, Categorify, Clip, FillMissing, HashBucket, JoinGroupby, LogOp,
                                Normalize, NormalizeMinMax, Rename, Tags, Workflow)
from recstack.workflows.arrays import transform_arrays


def frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.normal(35, 12, n).astype(np.float32)
    age[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame({"user_id": rng.integers(0, 200, n), "item_id": rng.zipf(1.5, n) % 500,
                         "age": age, "price": rng.exponential(20, n)})


def numeric_workflow(train: pd.DataFrame) -> Workflow:
    return Workflow((["user_id", "item_id"] >> Categorify(freq_threshold=2) >> AddTags(Tags.CATEGORICAL))
                    + (["age"] >> FillMissing() >> Normalize())
                    + (["price"] >> Clip(0, 60) >> LogOp() >> NormalizeMinMax())
                    + (["price"] >> Bucketize([5, 20, 50]) >> Rename(postfix="_b"))
                    + (["item_id"] >> JoinGroupby(["price"], ["count", "mean"]))).fit(train, progress=False)


def check(wf: Workflow, test: pd.DataFrame, to_array) -> None:
    expected = wf.transform(test)
    got = transform_arrays(wf, {c: to_array(test[c].to_numpy()) for c in wf.input_columns})
    assert list(got) == list(expected.columns)
    for name, arr in got.items():
        arr = arr.cpu().numpy() if hasattr(arr, "cpu") else np.asarray(arr)
        want = expected[name].to_numpy()
        assert arr.dtype == want.dtype, name
        np.testing.assert_allclose(arr, want, rtol=1e-6, err_msg=name) if want.dtype.kind == "f" else \
            np.testing.assert_array_equal(arr, want, err_msg=name)


def test_numpy_and_torch_arrays_equal_pandas():
    wf = numeric_workflow(frame())
    test = frame(seed=1)  # unseen ids, other NaNs
    check(wf, test, lambda a: a)
    import torch
    check(wf, test, torch.as_tensor)
    floats = test.assign(user_id=test["user_id"].astype(float).where(test.index % 7 != 0, np.nan))
    floats.loc[3, "user_id"] = 2.5  # never an integer id: OOV
    check(wf, floats, torch.as_tensor)


def test_unsupported_ops_name_themselves():
    df = pd.DataFrame({"g": ["a", "b"], "n": [1, 2]})
    wf = Workflow(["g"] >> Categorify()).fit(df, progress=False)
    with pytest.raises(InputError, match="Categorify: column 'g'"):
        transform_arrays(wf, {"g": np.array(["a", "b"], dtype=object)})
    import torch
    hb = Workflow(["n"] >> HashBucket(10)).fit(df, progress=False)
    assert transform_arrays(hb, {"n": np.array([1, 2])})["n"].tolist() == hb.transform(df)["n"].tolist()
    with pytest.raises(InputError, match="HashBucket"):
        transform_arrays(hb, {"n": torch.tensor([1, 2])})
