"""Several feature views of one entity read from the online store in one round trip.

Serving needs a batch's user features and histories, two feature views keyed by the same
``user_key``. The Feast provider's ``online_read`` reads one view per call, so that would be a
round trip (Redis) or a query (SQLite) per view. :func:`read_views` makes one:

* **Redis**: Feast keeps every view of an entity in one hash (key = serialized entity key +
  project, one field per ``view:feature`` plus ``_ts:view``), so one HMGET per entity asks for the
  fields of all views, and all HMGETs go in one pipeline. This is the pipeline Feast's own
  ``get_online_features`` builds for several views (``RedisOnlineStore._read_features_per_fv``),
  with one command per entity instead of one per (entity, view).
* **SQLite**: one ``UNION ALL`` query over the views' tables.
* any other online store: one ``online_read`` per view (what Feast offers there).

The result is, per view, what ``online_read`` returns for it: a ``(event timestamp or None,
{feature: ValueProto} or None)`` per entity key, in key order (a test compares the two). One
difference: an entity the store does not hold for a view is ``(None, None)`` with every store.
Feast's Redis ``online_read`` gives such an entity every feature's empty ValueProto at time 0,
which reads like a stored user whose features are all zero.
The Redis and SQLite paths use helpers of Feast's online stores that ``online_read`` itself calls;
``requirements.lock`` pins the Feast version they were written against.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

Row = tuple[datetime | None, dict[str, Any] | None]
"""One entity's read of one view, as ``online_read`` gives it."""


def read_views(store: Any, provider: Any, views: Sequence[Any], entity_keys: list[Any],
               features: Sequence[list[str]]) -> list[list[Row]]:
    """``views`` (Feast FeatureViews sharing the entity of ``entity_keys``, EntityKey protos) ->
    per view a list of :data:`Row`, one per key. ``features``: the feature names to read per view."""
    from feast.infra.online_stores.redis import RedisOnlineStore
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    online = provider.online_store
    if isinstance(online, RedisOnlineStore):
        return _redis(online, store.config, views, entity_keys, features)
    if isinstance(online, SqliteOnlineStore):
        return _sqlite(online, store.config, views, entity_keys)
    return [provider.online_read(config=store.config, table=view, entity_keys=entity_keys,
                                 requested_features=list(names)) for view, names in zip(views, features)]


def _redis(online: Any, config: Any, views: Sequence[Any], entity_keys: list[Any],
           features: Sequence[list[str]]) -> list[list[Row]]:
    from feast.infra.online_stores.redis import _versioned_fv_name

    redis_keys = online._generate_redis_keys_for_entities(config, entity_keys)
    parts = []  # per view: (versioned name, requested names incl. "_ts:<view>", its fields' slice)
    fields: list[Any] = []
    for view, names in zip(views, features):
        name = _versioned_fv_name(view, config)
        requested, hset_keys = online._generate_hset_keys_for_features(view, list(names), fv_name_override=name)
        parts.append((name, requested, slice(len(fields), len(fields) + len(hset_keys))))
        fields += hset_keys
    replies = online._read_hash_fields(config, [(key, fields) for key in redis_keys])
    # a view the hash lacks (every field None) is (None, None), as SQLite gives it: Feast's Redis read
    # would give each feature's empty ValueProto at time 0, which looks like a stored entity
    return [[(None, None) if all(v is None for v in reply[span])
             else online._get_features_for_entity(reply[span], name, requested) for reply in replies]
            for name, requested, span in parts]


def _sqlite(online: Any, config: Any, views: Sequence[Any], entity_keys: list[Any]) -> list[list[Row]]:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.sqlite import _quote_id, _table_id
    from feast.protos.feast.types.Value_pb2 import Value

    keys = [serialize_entity_key(k, entity_key_serialization_version=config.entity_key_serialization_version)
            for k in entity_keys]
    versioning = config.registry.enable_online_feature_view_versioning
    marks = ",".join("?" * len(keys))
    query = " UNION ALL ".join(
        f"SELECT {i}, entity_key, feature_name, value, event_ts FROM "
        f"{_quote_id(_table_id(config.project, view, versioning))} WHERE entity_key IN ({marks})"
        for i, view in enumerate(views))
    cursor = online._get_conn(config).cursor()
    cursor.execute(query + " ORDER BY 1, 2", keys * len(views))
    found = {view_key: list(rows) for view_key, rows in itertools.groupby(cursor.fetchall(), key=lambda r: r[:2])}
    out = []
    for i in range(len(views)):
        rows_of_view: list[Row] = []
        for key in keys:
            values, when = {}, None
            for _, _, feature, blob, ts in found.get((i, key), []):
                value = Value()
                value.ParseFromString(blob)
                values[feature] = value
                when = ts.astimezone(UTC) if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
            rows_of_view.append((when, values) if values else (None, None))
        out.append(rows_of_view)
    return out
