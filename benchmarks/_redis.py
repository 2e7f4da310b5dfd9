"""A throwaway redis-server for the benchmarks: loopback, a free port, its files in ``folder``.

Imported by the benchmark scripts (``python benchmarks/<name>.py`` puts this folder on the path).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path


def start_redis(folder: Path, appendfsync: str | None = "always") -> tuple[subprocess.Popen, str]:
    """Start redis-server (AOF with ``appendfsync``; None: no AOF) and wait until it answers.
    Returns the process and its ``redis://`` URL."""
    import redis

    from recstack.serving.tritonserver import free_port

    port = free_port()
    aof = ["--appendonly", "yes", "--appendfsync", appendfsync] if appendfsync else ["--appendonly", "no"]
    proc = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--bind", "127.0.0.1",
                             "--port", str(port), "--save", "", *aof, "--dir", str(folder)],
                            stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(500):
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("redis-server did not start")
