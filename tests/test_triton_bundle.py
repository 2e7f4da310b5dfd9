"""RECSTACK_TRITONSERVER_DIR: recstack finds tritonserver in an unpacked bundle (scripts/gpu_bundle.sh's
layout) instead of the pytriton package, and refuses a bundle for another Python or with a file missing."""

from __future__ import annotations

import sys

import pytest

from recstack.errors import InputError
from recstack.serving.tritonserver import TRITON_DIR_ENV, find_triton

VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def _bundle(tmp_path, version=VERSION):
    """A bundle made of links to the installed pytriton files (same layout as gpu_bundle.sh's)."""
    installed = find_triton()
    root = tmp_path / "tritonserver"
    (root / "backends" / "python").mkdir(parents=True)
    (root / "tritonserver").symlink_to(installed.binary)
    (root / "lib").symlink_to(installed.lib_dir)
    for src in (installed.python_backend_lib, installed.python_backend_utils, installed.python_stub):
        (root / "backends" / "python" / src.name).symlink_to(src)
    (root / "PYTHON_VERSION").write_text(version + "\n")
    return root


def test_bundle_is_used_when_named(tmp_path, monkeypatch):
    root = _bundle(tmp_path)
    monkeypatch.setenv(TRITON_DIR_ENV, str(root))
    install = find_triton()
    assert install.binary == root / "tritonserver" and install.lib_dir == root / "lib"
    assert install.python_stub == root / "backends" / "python" / "triton_python_backend_stub"


def test_bundle_for_another_python_or_incomplete_is_refused(tmp_path, monkeypatch):
    root = _bundle(tmp_path, version="3.99")
    monkeypatch.setenv(TRITON_DIR_ENV, str(root))
    with pytest.raises(InputError, match="Python 3.99"):
        find_triton()
    (root / "PYTHON_VERSION").write_text(VERSION)
    (root / "backends" / "python" / "libtriton_python.so").unlink()
    with pytest.raises(InputError, match="libtriton_python.so is missing"):
        find_triton()
