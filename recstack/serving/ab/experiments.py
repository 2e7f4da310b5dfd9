"""The experiments file and sticky assignment of users to its variants.

An experiments file (YAML or JSON) describes one A/B test::

    name: diversity-2026-11        # [A-Za-z0-9_.-], at most 40 characters
    salt: "2026-11-26"             # any non-empty string; a new salt reshuffles every user
    variants:                      # the first variant is the control the others are compared with
      - name: control
        share: 0.5                 # traffic shares: positive, summing to 1
      - name: lambda07
        share: 0.5
        model_version: 2           # optional: this version of the fused model (else the live one)
        params:                    # optional: extra ensemble request inputs, one scalar each
          diversity_lambda: 0.7
    outcomes:                      # optional: which event types count as what (these are the defaults)
      click: [click]
      conversion: [purchase, add_to_cart]

Assignment is a pure function of ``(salt, user_id)``: the first 8 bytes of
``sha256(f"{salt}:{user_id}")`` read as an unsigned big-endian integer and divided by 2**64 give
a number ``u`` in [0, 1); the user gets the variant whose cumulative-share interval holds ``u``.
So a user keeps their variant across requests, gateway processes and restarts, and the report
can recompute it (Python's ``hash()`` is salted per process and would not do).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recstack.errors import InputError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
DEFAULT_OUTCOMES = {"click": ("click",), "conversion": ("purchase", "add_to_cart")}
RESERVED_INPUTS = ("user_id", "top_n")
"""Ensemble inputs the gateway sets itself: a variant may not override them."""


def unit_hash(salt: str, user_id: int) -> float:
    """``sha256(f"{salt}:{user_id}")``'s first 8 bytes as a number in [0, 1) (stable everywhere)."""
    digest = hashlib.sha256(f"{salt}:{int(user_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True)
class Variant:
    """One arm: ``share`` of users, served by ``model_version`` of the fused model (None: the
    live version through the ensemble) with ``params`` sent as extra request inputs."""

    name: str
    share: float
    model_version: int | None = None
    params: dict[str, float | int | bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """A validated experiments file; :meth:`assign` maps a user to a variant."""

    name: str
    salt: str
    variants: tuple[Variant, ...]
    outcomes: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_OUTCOMES))

    def __post_init__(self) -> None:
        cumulative, total = [], 0.0
        for variant in self.variants:
            total += variant.share
            cumulative.append(total)
        object.__setattr__(self, "_bounds", cumulative)

    @property
    def control(self) -> Variant:
        return self.variants[0]

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)

    def assign(self, user_id: int) -> Variant:
        """The user's variant (sticky: the same for the same salt and user, everywhere)."""
        index = bisect.bisect_right(self._bounds, unit_hash(self.salt, user_id))  # type: ignore[attr-defined]
        return self.variants[min(index, len(self.variants) - 1)]  # float rounding at the top end

    def model_versions(self) -> list[int]:
        """The fused-model versions the variants ask for, ascending (the live one not included)."""
        return sorted({v.model_version for v in self.variants if v.model_version is not None})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "salt": self.salt,
                "variants": [{"name": v.name, "share": v.share, "model_version": v.model_version,
                              "params": dict(v.params)} for v in self.variants],
                "outcomes": {k: list(v) for k, v in self.outcomes.items()}}


def _where(path: str, key: str) -> str:
    return f"{path}: {key}"


def parse_experiment(obj: Any, source: str = "experiments") -> Experiment:
    """Validate a parsed experiments document; every error names the field and the reason."""
    from recstack.events.schema import EVENT_TYPES

    if not isinstance(obj, dict):
        raise InputError(f"{source}: expected a mapping with name, salt, variants")
    unknown = sorted(set(obj) - {"name", "salt", "variants", "outcomes"})
    if unknown:
        raise InputError(_where(source, f"{unknown[0]}: unknown field (known: name, salt, variants, outcomes)"))
    name = obj.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InputError(_where(source, f"name: {name!r} must be 1-40 characters of A-Z a-z 0-9 _ . -"))
    salt = obj.get("salt")
    if not isinstance(salt, (str, int)) or isinstance(salt, bool) or not str(salt):
        raise InputError(_where(source, "salt: required, a non-empty string"))
    raw_variants = obj.get("variants")
    if not isinstance(raw_variants, list) or len(raw_variants) < 2:
        raise InputError(_where(source, "variants: a list of at least two variants is required"))
    variants = [_parse_variant(v, f"variants[{i}]", source) for i, v in enumerate(raw_variants)]
    names = [v.name for v in variants]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(_where(source, f"variants: name {repeated[0]!r} is used twice"))
    total = sum(v.share for v in variants)
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        raise InputError(_where(source, f"variants: shares sum to {total:g}, not 1"))
    outcomes = dict(DEFAULT_OUTCOMES)
    raw_outcomes = obj.get("outcomes") or {}
    if not isinstance(raw_outcomes, dict):
        raise InputError(_where(source, "outcomes: expected a mapping {click: [types], conversion: [types]}"))
    for key, types in raw_outcomes.items():
        if key not in DEFAULT_OUTCOMES:
            raise InputError(_where(source, f"outcomes.{key}: unknown outcome (known: click, conversion)"))
        if isinstance(types, str):
            types = [types]
        bad = [t for t in types or [] if t not in EVENT_TYPES]
        if not types or bad:
            raise InputError(_where(source, f"outcomes.{key}: {bad or types!r} are not event types "
                                            f"({', '.join(EVENT_TYPES)})"))
        outcomes[key] = tuple(types)
    return Experiment(name, str(salt), tuple(variants), outcomes)


def _parse_variant(obj: Any, where: str, source: str) -> Variant:
    if not isinstance(obj, dict):
        raise InputError(_where(source, f"{where}: expected a mapping with name and share"))
    unknown = sorted(set(obj) - {"name", "share", "model_version", "params"})
    if unknown:
        raise InputError(_where(source, f"{where}.{unknown[0]}: unknown field (known: name, share, model_version, params)"))
    name = obj.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InputError(_where(source, f"{where}.name: {name!r} must be 1-40 characters of A-Z a-z 0-9 _ . -"))
    share = obj.get("share")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise InputError(_where(source, f"{where}.share: {share!r} must be a number in (0, 1]"))
    version = obj.get("model_version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise InputError(_where(source, f"{where}.model_version: {version!r} must be a version number >= 1"))
    params = obj.get("params") or {}
    if not isinstance(params, dict):
        raise InputError(_where(source, f"{where}.params: expected a mapping of input name -> number"))
    for key, value in params.items():
        if key in RESERVED_INPUTS:
            raise InputError(_where(source, f"{where}.params.{key}: set by the gateway, not by a variant"))
        if not isinstance(value, (int, float, bool)) or (isinstance(value, float) and not math.isfinite(value)):
            raise InputError(_where(source, f"{where}.params.{key}: {value!r} must be a finite number or a boolean"))
    return Variant(name, float(share), version, dict(params))


def load_experiment(path: Path | str) -> Experiment:
    """Read and validate an experiments file (``.json``, else YAML)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--experiments: {path} does not exist")
    import yaml

    text = path.read_text()
    try:
        obj = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise InputError(f"--experiments: {path} is not valid {kind}: {' '.join(str(exc).split())}") from None
    return parse_experiment(obj, str(path))
