"""Model versions of an exported repository: list them, deploy one, roll back, with no restart.

Every `recstack export` adds a numbered version of the fused model (``recommend_steps/<N>/``,
with ``manifest.json``: model hashes, data window, evaluate metrics, creation time). The
version Triton serves is the model's ``version_policy``; deploying rewrites it and asks the
running server (explicit model-control mode) to reload the model: Triton loads the new
version before it unloads the old one, so requests keep being answered. Each deployment is
appended to ``recommend_steps/deployments.json``; rollback goes back to the version live
before the current one.

An A/B experiment over model versions needs them loaded together: :func:`load_versions` sets
the policy to the live version plus the experiment's (``versions: [ 1, 2 ]`` with a comment
marking the live one) and pins the ``recommend`` ensemble's step to the live version (Triton's
default, -1, would forward to the highest loaded one); the gateway asks for an experiment's
version by number. A deploy keeps the extra versions loaded; ``load_versions(repo, [])``
unloads them and unpins the ensemble.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from recstack.cliutil import add_dataset_argument
from recstack.ensembles.graph import ENSEMBLE_NAME, FUSED_NAME, MANIFEST_FILE
from recstack.ensembles.model_repo import (
    live_version,
    model_versions,
    pin_ensemble_version,
    served_versions,
    set_live_version,
)
from recstack.errors import InputError
from recstack.io import read_json, write_json
from recstack.paths import RunPaths
from recstack.serving.server import DEFAULT_HTTP_PORT

HISTORY_FILE = "deployments.json"


def _model_dir(repo: Path) -> Path:
    model_dir = Path(repo) / FUSED_NAME
    if not model_dir.is_dir():
        raise InputError(f"--repo: {repo} has no {FUSED_NAME} model (export with `recstack export`, fused)")
    return model_dir


def list_versions(repo: Path) -> list[dict[str, Any]]:
    """One row per version: ``version``, ``live``, and its manifest (created, data window, metrics)."""
    model_dir = _model_dir(repo)
    live = live_version(model_dir)
    rows = []
    for version in model_versions(model_dir):
        manifest_path = model_dir / str(version) / MANIFEST_FILE
        manifest = read_json(manifest_path) if manifest_path.is_file() else {}
        manifest.pop("sha256", None)
        rows.append({"version": version, "live": version == live, **manifest})
    return rows


def history(repo: Path) -> list[dict[str, Any]]:
    path = _model_dir(repo) / HISTORY_FILE
    return read_json(path) if path.is_file() else []


def deploy(repo: Path, version: int, url: str | None = None, timeout_s: float = 120.0) -> dict[str, Any]:
    """Make ``version`` live: rewrite the policy, record it, and reload it on the server at ``url``
    (HTTP ``host:port``; None: the next server start picks it up). Returns what happened."""
    model_dir = _model_dir(repo)
    before = live_version(model_dir)
    set_live_version(model_dir, version)
    write_json(model_dir / HISTORY_FILE, history(repo) + [{"version": int(version), "previous": before,
                                                           "at": time.time()}])
    reloaded = False
    pinned = _pin_ensemble(repo)
    if url is not None:
        from tritonclient import http
        from tritonclient.utils import InferenceServerException

        client = http.InferenceServerClient(url=url, network_timeout=timeout_s, connection_timeout=timeout_s)
        try:
            client.load_model(FUSED_NAME)
            if not client.is_model_ready(FUSED_NAME, str(version)):
                raise InputError(f"--version: version {version} did not become ready on {url}")
            if pinned:
                client.load_model(ENSEMBLE_NAME)
            reloaded = True
        except InferenceServerException as exc:
            set_live_version(model_dir, before)  # the server still serves `before`: keep the files saying so
            reason = " ".join(exc.message().split("\n\nAt:")[0].split())  # one line: no python traceback
            raise InputError(f"--url: {url} could not load version {version}: {reason}") from None
        finally:
            client.close()
    return {"version": int(version), "previous": before, "reloaded": reloaded}


def _pin_ensemble(repo: Path) -> bool:
    """Pin the ensemble to the live version while other versions are loaded too, else unpin it
    (-1); returns whether the ensemble's config changed or is pinned (it must then be reloaded)."""
    model_dir = _model_dir(repo)
    extra = len(served_versions(model_dir)) > 1
    ensemble = Path(repo) / ENSEMBLE_NAME
    if not (ensemble / "config.pbtxt").is_file():
        return False
    changed = pin_ensemble_version(ensemble, FUSED_NAME, live_version(model_dir) if extra else -1)
    return changed or extra


def load_versions(repo: Path, versions: list[int], url: str | None = None, timeout_s: float = 120.0) -> dict[str, Any]:
    """Load ``versions`` of the fused model beside the live one (``[]``: only the live one), pin
    the ensemble to the live version, and reload both on the server at ``url`` (HTTP host:port;
    None: at the next start). Returns ``{"live", "loaded", "reloaded"}``."""
    model_dir = _model_dir(repo)
    live = live_version(model_dir)
    if live is None:
        raise InputError(f"--repo: {model_dir} has no live version")
    before = served_versions(model_dir)
    set_live_version(model_dir, live, also=[v for v in versions if v != live])
    _pin_ensemble(repo)
    loaded = served_versions(model_dir)
    if url is None:
        return {"live": live, "loaded": loaded, "reloaded": False}
    from tritonclient import http
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(url=url, network_timeout=timeout_s, connection_timeout=timeout_s)
    try:
        client.load_model(FUSED_NAME)
        client.load_model(ENSEMBLE_NAME)
        not_ready = [v for v in loaded if not client.is_model_ready(FUSED_NAME, str(v))]
        if not_ready:
            raise InputError(f"versions: {not_ready} did not become ready on {url}")
    except InferenceServerException as exc:
        set_live_version(model_dir, live, also=[v for v in before if v != live])  # what the server still serves
        _pin_ensemble(repo)
        reason = " ".join(exc.message().split("\n\nAt:")[0].split())
        raise InputError(f"--url: {url} could not load versions {loaded}: {reason}") from None
    finally:
        client.close()
    return {"live": live, "loaded": loaded, "reloaded": True}


def rollback(repo: Path, url: str | None = None) -> dict[str, Any]:
    """Deploy the version that was live before the current one."""
    deployments = history(repo)
    if not deployments or deployments[-1].get("previous") is None:
        raise InputError("rollback: no earlier deployment to go back to")
    return deploy(repo, deployments[-1]["previous"], url)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="model versions: list, deploy, roll back (no server restart)")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    sub.required = True
    for name, help_text in (("list", "versions with their manifests; the live one marked"),
                            ("deploy", "make a version live"), ("rollback", "go back to the previous version")):
        action = sub.add_parser(name, help=help_text)
        add_dataset_argument(action)
        action.add_argument("--repo", type=Path, default=None, help="model repository (default: triton_repo/<dataset>)")
        if name == "deploy":
            action.add_argument("--version", type=int, required=True)
        if name != "list":
            action.add_argument("--url", default=f"127.0.0.1:{DEFAULT_HTTP_PORT}",
                                help="HTTP address of the running tritonserver to reload ('' for none)")
        action.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    repo = args.repo or RunPaths.for_dataset(args.dataset).triton_repo
    if args.models_command == "list":
        for row in list_versions(repo):
            metrics = (row.get("metrics") or {}).get("two_tower+dlrm", {})
            print(f"{'*' if row['live'] else ' '} v{row['version']:<3} {row.get('created', '?'):<32} "
                  f"window {row.get('data_window_unix_s')}  ndcg@10 {metrics.get('ndcg@10', float('nan')):.4f}")
        return 0
    url = args.url or None
    done = deploy(repo, args.version, url) if args.models_command == "deploy" else rollback(repo, url)
    where = f"reloaded on {url}" if done["reloaded"] else "takes effect when the server starts"
    print(f"live version: {done['version']} (was {done['previous']}); {where}")
    return 0
