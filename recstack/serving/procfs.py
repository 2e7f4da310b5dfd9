"""What Linux ``/proc`` says about a running tritonserver and its python-backend stubs.

tritonserver is started as the leader of its own process group (:mod:`recstack.serving.tritonserver`),
and its stubs are its children in that group, so the group id is the server's pid. The soak test
samples memory with these functions, the load benchmark and the tests read CPU time. Processes that
exit between the listing and the read are skipped, never an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STUB_NAME_PREFIX = "triton_python"
"""How the python backend's stub (``triton_python_backend_stub``) shows in ``/proc/<pid>/stat``
(the kernel keeps 15 characters of a command name)."""


@dataclass(frozen=True)
class ProcessCpu:
    """One process of a group: ``cpu_s`` user + system CPU seconds so far."""

    pid: int
    name: str
    cpu_s: float

    @property
    def is_stub(self) -> bool:
        """A python-backend stub (the server itself, or anything else, is not)."""
        return self.name.startswith(STUB_NAME_PREFIX)


def group_processes(pgid: int) -> list[ProcessCpu]:
    """Every live process of process group ``pgid``, by pid."""
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the name sits in parentheses and may itself hold spaces or parentheses
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) != pgid:  # field 5: process group
            continue
        out.append(ProcessCpu(int(entry), name, (int(fields[11]) + int(fields[12])) / tick))  # utime, stime
    return sorted(out, key=lambda p: p.pid)


def group_pids(pgid: int) -> list[int]:
    """Pids of the live processes of process group ``pgid``, ascending."""
    return [p.pid for p in group_processes(pgid)]


def rss_mib(pid: int) -> float | None:
    """Resident memory of ``pid`` in MiB (VmRSS), None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out
