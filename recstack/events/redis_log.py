"""The event log on Redis Streams (a real ``redis-server``, Redis >= 6.2).

Keys, for log ``name`` (the dataset): ``recstack:events:<name>:stream`` (the stream; entry id
``<offset>-0``), ``...:ids`` (hash event_id -> offset, the idempotency index), ``...:next``
(the offset counter), ``...:consumers`` (hash consumer -> committed offset).

One batch is one Lua script, which Redis runs atomically (no other client sees half a batch) and
writes to the AOF as one MULTI/EXEC, which a restart replays whole or not at all. Validation is
done before the script, so the script does not fail half-way (Redis does not roll back a script
that errors after writing; only an out-of-memory server could cause that).

Durability depends on the server's configuration, not on this client:

* ``appendonly yes`` + ``appendfsync always``: the AOF is written and fsynced before Redis sends
  the reply, so an acknowledged append survives a crash of redis-server and a power loss (the
  equivalent of SQLite ``synchronous=FULL``).
* ``appendfsync everysec`` (Redis's default with AOF): survives a redis-server crash (the data is
  in the OS page cache) but a power loss or kernel crash can lose the last ~1 s of acknowledged
  events.
* ``appendfsync no``: the OS decides when to flush (typically within 30 s).
* no AOF (RDB snapshots only, or ``--save ""``): everything since the last snapshot is lost when
  redis-server stops. Only for tests and benchmarks.

:attr:`RedisEventLog.durability` reports the server's setting; :meth:`RedisEventLog.require_durable`
raises unless it is ``appendfsync always``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recstack.errors import InputError
from recstack.events.log import EventLog
from recstack.events.schema import AppendResult, EventBatch

_APPEND = """
local out = {}
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local b = 3 + i * 6
  local eid = ARGV[b]
  local off = redis.call('HGET', KEYS[2], eid)
  if off then
    out[#out + 1] = -tonumber(off)
  else
    off = redis.call('INCR', KEYS[3])
    redis.call('HSET', KEYS[2], eid, off)
    redis.call('XADD', KEYS[1], off .. '-0', 'e', eid, 'u', ARGV[b + 1], 'i', ARGV[b + 2], 't', ARGV[b + 3],
               'v', ARGV[b + 4], 's', ARGV[b + 5], 'r', ARGV[1])
    out[#out + 1] = off
  end
end
return out
"""

_COMMIT = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local off = tonumber(ARGV[2])
if ARGV[3] == '1' or off > cur then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return off
end
return cur
"""


class RedisEventLog(EventLog):
    """Event log in a Redis stream. ``url``: ``redis://host:port/db``; ``name``: the key prefix
    (one log per dataset). Thread-safe (redis-py's connection pool)."""

    def __init__(self, url: str, name: str = "default", socket_timeout_s: float = 30.0):
        import redis

        self.url = url
        self.name = name
        self._socket_timeout_s = max(float(socket_timeout_s), 2.0)
        prefix = f"recstack:events:{name}:"
        self._stream, self._ids, self._next, self._consumers = (prefix + k for k in ("stream", "ids", "next", "consumers"))
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=self._socket_timeout_s)
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise InputError(f"event log url: cannot reach Redis at {url} ({exc})") from None
        self._append_script = self.client.register_script(_APPEND)
        self._commit_script = self.client.register_script(_COMMIT)

    @property
    def durability(self) -> str:
        """``"appendfsync always"`` / ``"appendfsync everysec"`` / ``"appendfsync no"`` / ``"no AOF"``."""
        conf = self.client.config_get("append*")
        if conf.get("appendonly") != "yes":
            return "no AOF"
        return f"appendfsync {conf.get('appendfsync')}"

    def require_durable(self) -> None:
        """Raise InputError unless an acknowledged append survives a power loss (see the module doc)."""
        if self.durability != "appendfsync always":
            raise InputError(f"event log {self.url}: Redis has {self.durability}; acknowledged events are "
                             "only power-loss safe with `appendonly yes` and `appendfsync always`")

    def _append(self, batch: EventBatch) -> AppendResult:
        argv: list[Any] = [repr(float(batch.received[0])), len(batch)]
        for eid, u, i, t, v, s in zip(batch.event_id.tolist(), batch.user.tolist(), batch.item.tolist(),
                                      batch.type.tolist(), batch.value.tolist(), batch.timestamp.tolist()):
            argv += [eid, u, i, t, "" if v != v else repr(v), repr(s)]
        out = self._append_script(keys=[self._stream, self._ids, self._next], args=argv)
        offsets = [abs(int(o)) for o in out]
        dup = [int(o) < 0 for o in out]
        # a repeat of an id inside this batch: the script stored the first, so it is found as stored
        n_dup = sum(dup)
        return AppendResult(len(out) - n_dup, n_dup, offsets, dup)

    def _batch(self, entries: list[tuple[str, dict[str, str]]]) -> EventBatch:
        if not entries:
            return EventBatch.empty()
        cols: dict[str, list[Any]] = {k: [] for k in ("offset", "event_id", "user", "item", "type", "value",
                                                       "timestamp", "received")}
        for entry_id, f in entries:
            cols["offset"].append(int(entry_id.split("-", 1)[0]))
            cols["event_id"].append(f["e"])
            cols["user"].append(int(f["u"]))
            cols["item"].append(int(f["i"]))
            cols["type"].append(f["t"])
            cols["value"].append(float(f["v"]) if f["v"] else np.nan)
            cols["timestamp"].append(float(f["s"]))
            cols["received"].append(float(f["r"]))
        return EventBatch.from_columns(cols)

    def read(self, after_offset: int = 0, limit: int = 1000) -> EventBatch:
        entries = self.client.xrange(self._stream, min=f"({int(after_offset)}-0", max="+", count=int(limit))
        return self._batch(entries)

    def last_offset(self) -> int:
        return int(self.client.get(self._next) or 0)

    def wait(self, after_offset: int, timeout_s: float) -> bool:
        """``XREAD BLOCK``: returns as soon as an event past ``after_offset`` is appended."""
        if self.last_offset() > after_offset:
            return True
        ms = max(1, int(min(timeout_s, self._socket_timeout_s - 1.0) * 1000))
        got = self.client.xread({self._stream: f"{int(after_offset)}-0"}, count=1, block=ms)
        return bool(got)

    def commit(self, consumer: str, offset: int, *, force: bool = False) -> int:
        consumer, offset = self._check_commit(consumer, offset, self.last_offset())
        return int(self._commit_script(keys=[self._consumers], args=[consumer, offset, "1" if force else "0"]))

    def committed(self, consumer: str) -> int:
        return int(self.client.hget(self._consumers, consumer) or 0)

    def consumers(self) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(self.client.hgetall(self._consumers).items())}

    def count(self) -> int:
        """Events stored (XLEN)."""
        return int(self.client.xlen(self._stream))

    def close(self) -> None:
        self.client.close()
