"""A stage runs out of disk (issue 11): a clear one-line error, exit code 1, and the previous run's
files byte for byte as they were (every stage writes through ``recstack.io.atomic_dir``).

"Disk full" is real: the stage runs in a child process whose file-size limit (``RLIMIT_FSIZE``)
is below the size of the files it writes, so the kernel refuses the write (EFBIG, what a full disk's
ENOSPC is to the code: the same failed ``write``). Python ignores SIGXFSZ, so the write raises
instead of killing the process; this works without privileges, unlike a small tmpfs mount.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

FILE_SIZE_LIMIT = 64 * 1024
"""Bytes a file of the child may grow to: below the ONNX models, index and feature tables written."""

STAGES = {
    # stage: (command after `recstack`, folders of the run home it writes, relative to the home)
    "export": (["export", "--dataset", "ml-100k"], ["triton_repo/ml-100k"]),
    "workflow fit": (["workflow", "fit", "--dataset", "ml-100k"], ["runs/ml-100k/workflow", "runs/ml-100k/features"]),
}


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _with_file_size_limit(cmd: list[str]) -> list[str]:
    """``cmd`` run under RLIMIT_FSIZE. prlimit (util-linux) rather than a preexec_fn, which would
    fork() this process while gRPC client threads of other tests' fixtures are live."""
    return [shutil.which("prlimit") or "/usr/bin/prlimit", f"--fsize={FILE_SIZE_LIMIT}:{FILE_SIZE_LIMIT}", "--", *cmd]


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_on_a_full_disk_fails_in_one_line_and_keeps_the_previous_files(stage, e2e_paths, tmp_path):
    command, written = STAGES[stage]
    root = tmp_path / "runs" / "ml-100k"
    root.mkdir(parents=True)
    for name in ("data", "workflow", "features", "feature_repo", "models", "index", "reports"):
        if f"runs/ml-100k/{name}" in written:
            shutil.copytree(e2e_paths.root / name, root / name)  # a copy this stage may replace
        else:
            (root / name).symlink_to(e2e_paths.root / name)
    if "triton_repo/ml-100k" in written:
        shutil.copytree(e2e_paths.triton_repo, tmp_path / "triton_repo" / "ml-100k")
    before = {folder: _tree_digest(tmp_path / folder) for folder in written}

    cli = Path(sys.executable).with_name("recstack")
    cmd = [str(cli), *command, "--no-progress"] if stage == "workflow fit" else [str(cli), *command]
    proc = subprocess.run(_with_file_size_limit(cmd),
                          env={**os.environ, "RECSTACK_HOME": str(tmp_path)}, capture_output=True, text=True,
                          timeout=300, check=False)
    err = proc.stderr.strip().splitlines()
    print(f"{stage} with files limited to {FILE_SIZE_LIMIT} bytes: exit {proc.returncode}; {err[-1:]}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert err and err[-1].startswith("recstack: error: ") and "Traceback" not in proc.stderr  # one line, last
    assert "file too large" in err[-1].lower() and "previous files" in err[-1]
    for folder in written:
        assert _tree_digest(tmp_path / folder) == before[folder], f"{folder} changed"
        leftovers = [p.name for p in (tmp_path / folder).parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
        assert not leftovers, leftovers
