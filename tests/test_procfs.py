"""recstack.serving.procfs against real processes: a process group of our own, with a member whose
executable is named like the python backend's stub."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from recstack.serving.procfs import child_pids, group_pids, group_processes, rss_mib

# a group leader like tritonserver: starts a child (which joins its group), works 0.3 s of CPU, waits
_LEADER = """
import subprocess, sys, time
child = subprocess.Popen([sys.argv[1], "60"])
print(child.pid, flush=True)
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
time.sleep(60)
"""


def test_group_members_their_cpu_and_which_is_a_stub(tmp_path):
    stub = tmp_path / "triton_python_backend_stub"
    shutil.copy(shutil.which("sleep"), stub)
    leader = subprocess.Popen([sys.executable, "-c", _LEADER, str(stub)], start_new_session=True,
                              stdout=subprocess.PIPE, text=True)
    try:
        member = int(leader.stdout.readline())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            members = {p.pid: p for p in group_processes(leader.pid)}
            if members.get(leader.pid) and members[leader.pid].cpu_s >= 0.25:
                break
            time.sleep(0.1)
        assert sorted(members) == sorted([leader.pid, member]) == group_pids(leader.pid)
        assert members[member].is_stub and not members[leader.pid].is_stub
        assert members[leader.pid].cpu_s >= 0.25 and members[member].cpu_s < 0.25
        assert os.getpid() not in members
        assert leader.pid in child_pids(os.getpid()) and child_pids(leader.pid) == [member]
        assert rss_mib(leader.pid) > 1.0
    finally:
        os.killpg(leader.pid, 9)
        leader.wait()
    deadline = time.monotonic() + 10  # the orphaned member is reaped by init, not by us
    while group_pids(leader.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_pids(leader.pid) == [] and rss_mib(leader.pid) is None
