"""recstack.features.view_reads: user features and history in one read equal Feast's read per view,
on the real SQLite and Redis online stores of the ML-100K end-to-end run."""

from __future__ import annotations

import pytest

from recstack.features import OnlineFeatures, build_feature_repo
from recstack.features.view_reads import read_views

VIEWS = ("user_features", "user_history")


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def online(request, e2e_paths, tmp_path_factory) -> OnlineFeatures:
    if request.param == "sqlite":
        return OnlineFeatures(e2e_paths.feature_repo)
    # its own Redis database: the end-to-end tests' store (db 0) keeps the histories they pushed
    url = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/7"
    repo = tmp_path_factory.mktemp("view_reads") / "feature_repo"
    build_feature_repo(e2e_paths.features, repo, online_store="redis", redis_url=url)
    return OnlineFeatures(repo)


def entity_keys(keys: list[int]) -> list:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return [EntityKey(join_keys=["user_key"], entity_values=[Value(int64_val=k)]) for k in keys]


@pytest.mark.parametrize("keys", [[1], [5, 3, 10**9, 5, 2], list(range(1, 65)), []])
def test_one_read_equals_feast_read_per_view(online, keys):
    """Known, unknown and repeated users, in request order; the empty batch too."""
    views = [online._views[v] for v in VIEWS]
    names = [[c.name for c in online.columns[v]] for v in VIEWS]
    per_view = [online._provider.online_read(config=online.store.config, table=view, entity_keys=entity_keys(keys),
                                             requested_features=list(n)) for view, n in zip(views, names)]
    one = read_views(online.store, online._provider, views, entity_keys(keys), names)
    # a user the store lacks is (None, None); Feast's Redis read gives empty values at time 0 instead
    expected = [[(None, None) if key == 10**9 else row for key, row in zip(keys, rows)] for rows in per_view]
    assert one == expected
    assert all(when is not None and values for rows in one for key, (when, values) in zip(keys, rows) if key != 10**9)


def test_users_with_histories_reads_the_store_once(online, monkeypatch):
    """The serving lookup makes one read of both views, not one per view."""
    import recstack.features.online as online_module

    calls = []

    def counting(*args, **kwargs):
        calls.append(len(args[2]))
        return read_views(*args, **kwargs)

    monkeypatch.setattr(online_module, "read_views", counting)
    monkeypatch.setattr(online._provider, "online_read", lambda **_: pytest.fail("a read per view"))
    _, has_features, recent, _, _, has_history = online.users_with_histories([1, 2, 10**9])
    assert calls == [2]
    assert has_features.tolist() == [True, True, False] and has_history.tolist() == [True, True, False]
    assert len(recent[0]) > 0 and len(recent[2]) == 0
