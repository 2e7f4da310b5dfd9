"""Checksums of an exported model version: written at export, verified when the model loads.

``<model>/<version>/manifest.json`` holds ``"sha256": {relative path: hex digest}`` for every
file of the version folder (model code, step description, artifacts). The python backend
checks them in ``initialize`` before it builds the step, so a file changed or truncated after
export (a bad copy, a disk error, a hand edit) stops that version from loading with one line
naming the file, instead of serving from it.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recstack.errors import InputError
from recstack.io import read_json, sha256_file, write_json

MANIFEST_FILE = "manifest.json"


def write_manifest(version_dir: Path, version: int, extra: dict[str, Any]) -> None:
    """Write ``manifest.json`` into ``version_dir``: ``version``, creation time, ``extra``, and
    the sha256 of every file already in the folder."""
    files = {str(p.relative_to(version_dir)): sha256_file(p) for p in sorted(version_dir.rglob("*"))
             if p.is_file() and p.name != MANIFEST_FILE}
    write_json(version_dir / MANIFEST_FILE, {"version": version, "created": datetime.now(UTC).isoformat(),
                                             **extra, "sha256": files})


def verify_manifest(version_dir: str | os.PathLike, model_name: str) -> int:
    """Check every file the manifest lists against its sha256; return how many were checked.

    A version without a manifest (exported before manifests existed, or an unfused step)
    checks nothing and returns 0. A missing or changed file raises
    :class:`~recstack.errors.InputError` naming the model, the version folder and the file.
    """
    version_dir = Path(version_dir)
    manifest_path = version_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        return 0
    try:
        expected = read_json(manifest_path)["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"model {model_name}: {manifest_path} is not a readable manifest ({exc})") from None
    for relative, digest in expected.items():
        path = version_dir / relative
        if not path.is_file():
            raise InputError(f"model {model_name}: {relative} listed in {manifest_path} is missing "
                             "(export the model again)")
        actual = sha256_file(path)
        if actual != digest:
            raise InputError(f"model {model_name}: {path} has sha256 {actual[:16]}..., the manifest says "
                             f"{digest[:16]}...; the file changed after export (export the model again)")
    return len(expected)
