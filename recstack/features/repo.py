"""Generate, apply and materialize the Feast repository of one run (architecture section 3).

The repository is self-contained: the section-2 parquet files are copied into its
``data/`` folder and the FileSources name them relative to the repository root
(Feast resolves relative source paths, the registry and the SQLite file against
``repo_path``), so the folder can be built in a temporary place by
:func:`recstack.io.atomic_dir`, renamed into place, and moved later without breaking.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from recstack.errors import InputError
from recstack.io import atomic_dir, write_json

PROJECT = "recstack"
DEFINITIONS_FILE = "definitions.py"
DATA_DIR = "data"
ONLINE_DB = "online_store.db"
REGISTRY_DB = "registry.db"
BUILD_INFO = "build.json"
PUSH_SOURCE = "user_history_push"
APPLIED_OFFSET = "applied_offset"
"""int64 feature of ``user_history``: the event-log offset of the last event applied to the user's
online history (0 = none), so an event log consumer that restarts applies nothing twice."""
RECENT_TIMES = "recent_times"
"""list<int64> feature of ``user_history``: the unix seconds of each ``recent_items`` interaction
(same order and length), the sequence tower's time-gap input; repositories built before it lack it."""
EVENT_TIMESTAMP = "event_timestamp"
# The features are static snapshots (ML-100K events are from 1998): a TTL long enough
# that nothing built from a historical dataset is ever considered stale.
TTL_DAYS = 365 * 100


@dataclass(frozen=True)
class ViewSpec:
    """One feature view: its parquet file, entity and join key."""

    name: str
    file: str
    entity: str
    join_key: str


VIEWS: tuple[ViewSpec, ...] = (
    ViewSpec("user_features", "user_features.parquet", "user", "user_key"),
    ViewSpec("item_features", "item_features.parquet", "item", "item_key"),
    ViewSpec("user_history", "user_history.parquet", "user", "user_key"),
)
ENTITIES = {"user": "user_key", "item": "item_key"}


def _feast_type(field: pa.Field, file: str) -> str:
    """The Feast type expression (source text) of one parquet column."""
    t = field.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_boolean(t):
        return "Bool"
    if pa.types.is_integer(t):
        return "Int64"
    if pa.types.is_floating(t):
        return "Float32"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "String"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        v = t.value_type
        if pa.types.is_integer(v):
            return "Array(Int64)"
        if pa.types.is_floating(v):
            return "Array(Float32)"
        if pa.types.is_string(v) or pa.types.is_large_string(v):
            return "Array(String)"
        if pa.types.is_boolean(v):
            return "Array(Bool)"
    raise InputError(f"{file}: column {field.name!r} has type {field.type}, which has no Feast type")


def _view_fields(schema: pa.Schema, spec: ViewSpec, file: str) -> list[tuple[str, str]]:
    names = schema.names
    if spec.join_key not in names:
        raise InputError(f"{file}: missing the entity key column {spec.join_key!r}")
    if EVENT_TIMESTAMP not in names:
        raise InputError(f"{file}: missing the {EVENT_TIMESTAMP!r} column")
    ts_type = schema.field(EVENT_TIMESTAMP).type
    if not pa.types.is_timestamp(ts_type):
        raise InputError(f"{file}: column {EVENT_TIMESTAMP!r} has type {ts_type}, expected a timestamp")
    key_type = schema.field(spec.join_key).type
    if not pa.types.is_integer(key_type):
        raise InputError(f"{file}: column {spec.join_key!r} has type {key_type}, expected int64")
    fields = []
    for field in schema:
        if field.name in (spec.join_key, EVENT_TIMESTAMP):
            continue
        fields.append((field.name, _feast_type(field, file)))
    if not fields:
        raise InputError(f"{file}: no feature columns besides {spec.join_key!r} and {EVENT_TIMESTAMP!r}")
    return fields


REDIS_CLIENT_OPTIONS = {"retry": "null", "socket_connect_timeout": "1", "socket_timeout": "2"}
"""redis-py options added to every connection string (unless it sets them). redis-py 6+ retries a
failed connect 3 times with 1-10 s exponential backoff: each read of a stopped Redis took 4 to 7 s
(measured), past Triton's 5 s request timeout, so the serving fallback never answered in time.
``retry=null`` (no retry) fails such a read in about a millisecond; a host that does not answer
at all fails after the 1 s connect timeout. A Redis that keeps the connection but never answers
(hung, paused, a half-open link) used to block a read forever: ``socket_timeout`` gives up after
2 s (a read takes milliseconds; the materialisation's pipelines well under a second), so the
serving fallback still answers inside Triton's 5 s. The next read connects again."""


def _with_client_options(connection_string: str) -> str:
    parts = connection_string.split(",")
    given = {p.split("=", 1)[0] for p in parts if "=" in p}
    return ",".join(parts + [f"{k}={v}" for k, v in REDIS_CLIENT_OPTIONS.items() if k not in given])


REDIS_PASSWORD_ENV = "RECSTACK_REDIS_PASSWORD"
"""Where the Redis password lives: ``feature_store.yaml`` holds only ``${RECSTACK_REDIS_PASSWORD}``,
which Feast expands from the environment each time it loads the file."""
REDIS_PASSWORD_REF = "${" + REDIS_PASSWORD_ENV + "}"


def redis_connection_string(redis_url: str) -> str:
    """Feast's ``host:port,db=N,password=${RECSTACK_REDIS_PASSWORD}`` string from a ``redis://`` URL,
    with :data:`REDIS_CLIENT_OPTIONS`.

    A password, in the URL or in ``$RECSTACK_REDIS_PASSWORD``, becomes a reference to the
    environment variable, never the secret itself (see :func:`export_redis_password`). A string
    that is already in Feast's form passes through, unless it carries a password.
    """
    has_password = bool(os.environ.get(REDIS_PASSWORD_ENV))
    if "://" not in redis_url:
        if "password=" in redis_url:
            raise InputError(f"redis_url: put the password in ${REDIS_PASSWORD_ENV}, not in the connection string")
        return _with_client_options(redis_url + (f",password={REDIS_PASSWORD_REF}" if has_password else ""))
    url = urlparse(redis_url)
    if url.scheme not in ("redis", "rediss"):
        raise InputError(f"redis_url: scheme {url.scheme!r} is not redis:// or rediss://")
    parts = [f"{url.hostname or 'localhost'}:{url.port or 6379}"]
    db = url.path.lstrip("/")
    if db:
        parts.append(f"db={int(db)}")
    if url.password or has_password:
        parts.append(f"password={REDIS_PASSWORD_REF}")
    if url.scheme == "rediss":
        parts.append("ssl=true")
    return _with_client_options(",".join(parts))


def export_redis_password(redis_url: str | None) -> None:
    """Move a password given in ``redis_url`` into ``$RECSTACK_REDIS_PASSWORD`` of this process.

    This process (and what it starts) can then open the store it builds; other processes need
    the variable set in their own environment. A URL password that disagrees with an already
    set variable is an error rather than a silent choice.
    """
    if not redis_url or "://" not in redis_url:
        return
    password = urlparse(redis_url).password
    if not password:
        return
    current = os.environ.get(REDIS_PASSWORD_ENV)
    if current and current != password:
        raise InputError(f"redis_url: its password differs from ${REDIS_PASSWORD_ENV}; give only one")
    os.environ[REDIS_PASSWORD_ENV] = password


def feature_store_yaml(online_store: str = "sqlite", redis_url: str | None = None) -> str:
    """The text of ``feature_store.yaml``; every path in it is relative to the repository."""
    if online_store == "sqlite":
        online = f"online_store:\n  type: sqlite\n  path: {ONLINE_DB}\n"
    elif online_store == "redis":
        conn = redis_connection_string(redis_url or "localhost:6379")
        online = f"online_store:\n  type: redis\n  connection_string: {json.dumps(conn)}\n"
    else:
        raise InputError(f"online_store: {online_store!r} is not one of sqlite, redis")
    return (
        f"project: {PROJECT}\n"
        "provider: local\n"
        "registry:\n"
        f"  path: {REGISTRY_DB}\n"
        "  cache_ttl_seconds: 60\n"
        "offline_store:\n"
        "  type: file\n"
        f"{online}"
        "entity_key_serialization_version: 3\n"
    )


def definitions_source(view_fields: dict[str, list[tuple[str, str]]]) -> str:
    """The generated Feast definitions module (also usable by the ``feast apply`` CLI)."""
    lines = [
        '"""Feast definitions generated by recstack.features.build_feature_repo: do not edit."""',
        "",
        "from datetime import timedelta",
        "",
        "from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType",
        "from feast.types import Array, Bool, Float32, Int64, String  # noqa: F401",
        "",
        f"TTL = timedelta(days={TTL_DAYS})",
        "",
    ]
    for entity, key in ENTITIES.items():
        lines.append(
            f'{entity} = Entity(name="{entity}", join_keys=["{key}"], value_type=ValueType.INT64)'
        )
    lines.append("")
    for spec in VIEWS:
        lines.append(
            f'{spec.name}_source = FileSource(name="{spec.name}_source", '
            f'path="{DATA_DIR}/{spec.file}", timestamp_field="{EVENT_TIMESTAMP}")'
        )
    lines.append(
        f'{PUSH_SOURCE} = PushSource(name="{PUSH_SOURCE}", batch_source=user_history_source)'
    )
    lines.append("")
    for spec in VIEWS:
        source = PUSH_SOURCE if spec.name == "user_history" else f"{spec.name}_source"
        lines.append(f"{spec.name} = FeatureView(")
        lines.append(f'    name="{spec.name}",')
        lines.append(f"    entities=[{spec.entity}],")
        lines.append("    ttl=TTL,")
        lines.append("    schema=[")
        lines.append(f'        Field(name="{spec.join_key}", dtype=Int64),')
        for name, dtype in view_fields[spec.name]:
            lines.append(f"        Field(name={name!r}, dtype={dtype}),")
        lines.append("    ],")
        lines.append("    online=True,")
        lines.append(f"    source={source},")
        lines.append(")")
        lines.append("")
    lines.append(
        "OBJECTS = [user, item, "
        + ", ".join(f"{s.name}_source" for s in VIEWS)
        + f", {PUSH_SOURCE}, "
        + ", ".join(s.name for s in VIEWS)
        + "]"
    )
    return "\n".join(lines) + "\n"


def load_definitions(repo_dir: Path) -> list[Any]:
    """Import the generated definitions module of ``repo_dir`` and return its Feast objects."""
    path = Path(repo_dir) / DEFINITIONS_FILE
    module_name = f"_recstack_feast_definitions_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    sys.modules.pop(module_name, None)
    return list(module.OBJECTS)


def build_feature_repo(
    features_dir: Path | str,
    repo_dir: Path | str,
    online_store: str = "sqlite",
    redis_url: str | None = None,
) -> dict:
    """Generate the Feast repository in ``repo_dir`` from section-2 parquet files, apply and materialize it.

    Returns a summary: row counts per view, the materialization window and wall times
    (``apply_s``, ``materialize_s``, ``total_s``). Any failure leaves the previous
    ``repo_dir`` untouched.
    """
    from feast import FeatureStore  # heavy import: only when building

    t0 = time.perf_counter()
    features_dir = Path(features_dir)
    repo_dir = Path(repo_dir).resolve()
    if online_store not in ("sqlite", "redis"):
        raise InputError(f"online_store: {online_store!r} is not one of sqlite, redis")

    view_fields: dict[str, list[tuple[str, str]]] = {}
    rows: dict[str, int] = {}
    ts_min: datetime | None = None
    ts_max: datetime | None = None
    for spec in VIEWS:
        src = features_dir / spec.file
        if not src.is_file():
            raise InputError(f"{src}: feature table not found (run `recstack workflows` first)")
        try:
            pfile = pq.ParquetFile(src)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
            raise InputError(f"{src}: not a readable parquet file ({exc})") from exc
        schema = pfile.schema_arrow
        view_fields[spec.name] = _view_fields(schema, spec, str(src))
        if spec.name == "user_history" and APPLIED_OFFSET not in schema.names:
            view_fields[spec.name].append((APPLIED_OFFSET, "Int64"))
        rows[spec.name] = pfile.metadata.num_rows
        ts = pq.read_table(src, columns=[EVENT_TIMESTAMP]).column(0)
        if len(ts) and ts.null_count:
            raise InputError(f"{src}: column {EVENT_TIMESTAMP!r} has {ts.null_count} null values")
        if len(ts):
            lo, hi = pa.compute.min(ts).as_py(), pa.compute.max(ts).as_py()
            lo = lo if lo.tzinfo else lo.replace(tzinfo=timezone.utc)
            hi = hi if hi.tzinfo else hi.replace(tzinfo=timezone.utc)
            ts_min = lo if ts_min is None else min(ts_min, lo)
            ts_max = hi if ts_max is None else max(ts_max, hi)

    now = datetime.now(timezone.utc)
    start = (ts_min or now) - timedelta(seconds=1)
    end = (ts_max or now) + timedelta(seconds=1)

    if online_store == "redis":
        export_redis_password(redis_url)
    with atomic_dir(repo_dir) as tmp:
        (tmp / DATA_DIR).mkdir()
        for spec in VIEWS:
            if spec.name == "user_history":
                _copy_with_applied_offset(features_dir / spec.file, tmp / DATA_DIR / spec.file)
            else:
                shutil.copy2(features_dir / spec.file, tmp / DATA_DIR / spec.file)
        (tmp / "feature_store.yaml").write_text(feature_store_yaml(online_store, redis_url))
        (tmp / DEFINITIONS_FILE).write_text(definitions_source(view_fields))
        (tmp / ".feastignore").write_text(f"{DATA_DIR}/\n")

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            store = FeatureStore(repo_path=str(tmp))
            t_apply = time.perf_counter()
            store.apply(load_definitions(tmp))
            apply_s = time.perf_counter() - t_apply
            t_mat = time.perf_counter()
            store.materialize(start_date=start, end_date=end)
            materialize_s = time.perf_counter() - t_mat
        _close_store(store)
        info = {
            "project": PROJECT,
            "online_store": online_store,
            "views": {
                spec.name: {"rows": rows[spec.name], "fields": [list(f) for f in view_fields[spec.name]]} for spec in VIEWS
            },
            "materialize_window": [start.isoformat(), end.isoformat()],
            "apply_s": round(apply_s, 3),
            "materialize_s": round(materialize_s, 3),
            "built_at": now.isoformat(),
        }
        info["total_s"] = round(time.perf_counter() - t0, 3)
        write_json(tmp / BUILD_INFO, info)
    info["repo_dir"] = str(repo_dir)
    return info


def _copy_with_applied_offset(src: Path, dst: Path) -> None:
    """Copy the user_history table, adding ``applied_offset`` = 0 (no logged event applied yet)."""
    table = pq.read_table(src)
    if APPLIED_OFFSET not in table.column_names:
        table = table.append_column(APPLIED_OFFSET, pa.array([0] * table.num_rows, pa.int64()))
    pq.write_table(table, dst)


def _close_store(store: Any) -> None:
    """Close the online store connection (SQLite) so the folder can be renamed or removed."""
    try:
        provider = store.provider
        online = getattr(provider, "online_store", None) or getattr(provider, "_online_store", None)
        conn = getattr(online, "_conn", None)
        if conn is not None:
            conn.close()
            online._conn = None
    except Exception:  # noqa: BLE001 - best effort
        pass
