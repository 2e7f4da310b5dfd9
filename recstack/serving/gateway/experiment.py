"""The gateway's side of an A/B experiment: route each request to its user's variant and log
what was shown (see :mod:`recstack.serving.ab`).

A variant with a ``model_version`` is served by that version of the fused model, asked for by
name and version (``recommend_steps``, version N; the ensemble itself only forwards to the
live version); a variant without one goes through the ``recommend`` ensemble as usual. Its
``params`` travel as extra request inputs of the same names, shaped [1, 1] with the dtype the
served model declares. At start-up every variant is checked against the server's model
metadata: a version that is not loaded or a parameter that is not a model input stops the
gateway with an error naming the variant and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recstack.ensembles.graph import ENSEMBLE_NAME, FUSED_NAME
from recstack.errors import InputError
from recstack.serving.ab.experiments import Experiment, Variant
from recstack.serving.ab.exposures import exposure_events


@dataclass
class Route:
    """Where one variant's requests go: ``model`` / ``version`` ("" = the policy's) and extra inputs."""

    variant: Variant
    model: str = ENSEMBLE_NAME
    version: str = ""
    inputs: dict[str, np.ndarray] = field(default_factory=dict)


class ExperimentRouter:
    """Assigns users (sticky, :meth:`Experiment.assign`), routes them, logs exposures to ``exposure_log``."""

    def __init__(self, experiment: Experiment, exposure_log):
        self.experiment = experiment
        self.exposure_log = exposure_log
        self.routes: dict[str, Route] = {}

    async def check(self, recommender) -> None:
        """Resolve every variant against the running server (``recommender.input_specs``); raises
        InputError naming the variant when its version is not loaded or a param is not an input."""
        from tritonclient.utils import triton_to_np_dtype

        for variant in self.experiment.variants:
            model, version = (FUSED_NAME, str(variant.model_version)) if variant.model_version else (ENSEMBLE_NAME, "")
            where = f"--experiments: variant {variant.name}"
            try:
                specs = await recommender.input_specs(model, version)
            except Exception as exc:  # noqa: BLE001  any server answer means: not servable
                detail = " ".join(str(exc).split())[:300]
                raise InputError(f"{where}: model {model} version {version or '(live)'} is not loaded on Triton "
                                 f"({detail}); load it with `recstack ab load-versions`") from None
            unknown = sorted(set(variant.params) - set(specs))
            if unknown:
                raise InputError(f"{where}: params.{unknown[0]} is not an input of model {model} "
                                 f"(inputs: {', '.join(sorted(specs))})")
            inputs = {name: np.full((1, 1), value, dtype=triton_to_np_dtype(specs[name]))
                      for name, value in variant.params.items()}
            self.routes[variant.name] = Route(variant, model, version, inputs)

    def route(self, user_id: int) -> Route:
        return self.routes[self.experiment.assign(user_id).name]

    def log_exposure(self, route: Route, user_id: int, item_ids: list[int]) -> None:
        """Append the shown list (durable before returning; blocking: call from a thread)."""
        if item_ids:
            self.exposure_log.append(exposure_events(self.experiment.name, route.variant.name, user_id, item_ids))

    def close(self) -> None:
        self.exposure_log.close()
