"""The synthetic generator: streamed parquet, shapes and dtypes, power laws, daily cycle,
determinism, the CLI, and a split that the workflow stage reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recstack.data.synth import HOURLY, split_synthetic, write_synthetic
from recstack.errors import InputError


def test_streamed_chunks_shapes_and_laws(tmp_path):
    summary = write_synthetic(tmp_path / "d", rows=60_000, users=600, items=400, seed=3, chunk_rows=25_000,
                              progress=False)
    meta = pq.ParquetFile(tmp_path / "d" / "interactions.parquet").metadata
    assert meta.num_rows == 60_000 and meta.num_row_groups == 3 and summary["counts"]["users"] == 600
    inter = pd.read_parquet(tmp_path / "d" / "interactions.parquet")
    assert {c: str(t) for c, t in inter.dtypes.items()} == {"user_id": "int64", "item_id": "int64",
                                                            "rating": "float32", "timestamp": "int64"}
    assert inter["user_id"].between(1, 600).all() and inter["item_id"].between(1, 400).all()
    assert set(inter["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    # power law: the top 1% of items take far more than 1% of interactions; not the low ids
    counts = inter["item_id"].value_counts()
    assert counts.head(4).sum() / len(inter) > 0.15
    assert counts.index[0] != 1 or counts.index[1] != 2
    users = inter["user_id"].value_counts()
    assert users.iloc[0] > 10 * users.median()
    # daily cycle: evening hours busier than the night, in proportion to HOURLY
    hours = (inter["timestamp"] % 86_400) // 3600
    share = hours.value_counts(normalize=True).sort_index().to_numpy()
    np.testing.assert_allclose(share, HOURLY / HOURLY.sum(), atol=0.01)
    users_t = pd.read_parquet(tmp_path / "d" / "users.parquet")
    items_t = pd.read_parquet(tmp_path / "d" / "items.parquet")
    assert len(users_t) == 600 and users_t["age"].dtype == np.float32 and users_t["age"].isna().any()
    assert len(items_t) == 400 and all(1 <= len(g) <= 3 for g in items_t["genres"])
    assert items_t["year"].dtype == np.float32
    # same seed, other chunking of the same rows: same file content
    write_synthetic(tmp_path / "e", rows=60_000, users=600, items=400, seed=3, chunk_rows=25_000, progress=False)
    pd.testing.assert_frame_equal(inter, pd.read_parquet(tmp_path / "e" / "interactions.parquet"))
    with pytest.raises(InputError, match="rows"):
        write_synthetic(tmp_path / "f", rows=0, progress=False)


def test_cli_and_split_feed_the_workflow(tmp_path, monkeypatch, capsys):
    from recstack.cli import main
    from recstack.workflows import fit_and_export

    monkeypatch.setenv("RECSTACK_HOME", str(tmp_path))
    assert main(["data", "synth", "--rows", "20000", "--name", "syn", "--split", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "syn: 20,000 interactions" in out and "split: train" in out
    data = tmp_path / "runs" / "syn" / "data"
    assert all((data / f"{n}.parquet").is_file() for n in ("train", "valid", "test", "users", "items"))
    summary = fit_and_export(data, tmp_path / "wf", tmp_path / "features", progress=False)
    assert summary["rows"]["user_features"] == 400
    assert main(["data", "synth", "--rows", "-5", "--no-progress"]) == 2
    assert split_synthetic  # imported for the CLI path above


def test_cli_popularity_exponents(tmp_path, monkeypatch, capsys):
    """`--item-alpha 0`: uniform popularity, so a few interactions per item reach every item (what the
    1M-item benchmark relies on for its catalogue); a negative exponent is refused with exit code 2."""
    from recstack.cli import main

    monkeypatch.setenv("RECSTACK_HOME", str(tmp_path))
    assert main(["data", "synth", "--rows", "20000", "--users", "200", "--items", "2000", "--item-alpha", "0",
                 "--user-alpha", "0", "--name", "flat", "--no-progress"]) == 0
    inter = pd.read_parquet(tmp_path / "runs" / "flat" / "data" / "interactions.parquet")
    items, users = inter["item_id"].value_counts(), inter["user_id"].value_counts()
    assert items.size > 0.99 * 2000 * (1 - np.exp(-10)) and items.iloc[0] < 30  # Poisson(10): no head
    assert users.iloc[0] < 1.5 * users.median()
    assert main(["data", "synth", "--rows", "100", "--item-alpha", "-1", "--no-progress"]) == 2
    assert "--item-alpha" in capsys.readouterr().err
    with pytest.raises(InputError, match="user-alpha"):
        write_synthetic(tmp_path / "g", rows=10, user_alpha=float("nan"), progress=False)
