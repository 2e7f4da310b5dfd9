"""Which Triton backends a model repository needs, checked before a server is started on it.

``recstack serve`` runs the ``tritonserver`` of the ``nvidia-pytriton`` wheel, whose backend
directory (:func:`recstack.serving.tritonserver.prepare_backend_dir`) holds the python backend
only. A repository exported with ``recstack export --backend onnxruntime`` also needs Triton's
onnxruntime backend, which NGC ``tritonserver`` images carry. Left to itself, tritonserver 2.51
loads every python model first (seconds) and then fails with ``unable to find backend library
for backend 'onnxruntime'``; this check says so at once, and what to do.
"""

from __future__ import annotations

from pathlib import Path

from recstack.ensembles.repo_runner import model_backend, read_model_config
from recstack.errors import InputError

BUNDLED_BACKENDS = ("python",)
"""The backends of the nvidia-pytriton wheel's tritonserver (``pytriton/tritonserver/backends/``)."""


def repository_backends(repo: str | Path) -> dict[str, str]:
    """``{model folder: backend}`` for every model of ``repo`` (``"ensemble"`` for ensembles)."""
    repo = Path(repo)
    return {folder.name: model_backend(read_model_config(folder))
            for folder in sorted(repo.iterdir()) if (folder / "config.pbtxt").is_file()}


def check_backends(repo: str | Path, available: tuple[str, ...] = BUNDLED_BACKENDS) -> None:
    """InputError naming the models whose backend this tritonserver lacks, and the way out."""
    missing = {name: backend for name, backend in repository_backends(repo).items()
               if backend != "ensemble" and backend not in available}
    if missing:
        backends = sorted(set(missing.values()))
        raise InputError(
            f"{repo}: model(s) {sorted(missing)} need Triton's {', '.join(backends)} backend, which this "
            f"tritonserver (nvidia-pytriton wheel: {', '.join(available)} backend only) does not have; serve "
            "this repository with an NGC tritonserver image (docker/Dockerfile.triton), or export it for this "
            "machine with `recstack export --backend python`")


RATE_LIMIT_OPTION = "--rate-limit=execution_count"
"""tritonserver option that turns on the rate limiter, without which Triton ignores the
instance priorities that ``recstack export --preferred-instance`` writes."""


def server_options(repo: str | Path) -> tuple[str, ...]:
    """tritonserver options that ``repo``'s exported configs rely on: :data:`RATE_LIMIT_OPTION`
    when any model's instance groups carry a ``rate_limiter`` block, else none."""
    repo = Path(repo)
    limited = any(group.HasField("rate_limiter")
                  for folder in sorted(repo.iterdir()) if (folder / "config.pbtxt").is_file()
                  for group in read_model_config(folder).instance_group)
    return (RATE_LIMIT_OPTION,) if limited else ()
