"""Several serving steps run one after another inside one step (one Triton model, one hop).

A python-backend hop costs a round trip through shared memory and the stub process; steps
that gain nothing from being separate models (nothing to scale apart, no other caller) are
fused into a :class:`ChainStep`. The same class runs the whole graph in-process
(:func:`recstack.ensembles.graph.run_in_process`), so the fused model and the per-step
models are the same code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recstack.ensembles.python_model import import_step_class
from recstack.errors import InputError


class ChainStep:
    """Runs ``ops`` in order on one batch; tensors are wired by name.

    ``ops``: ``[{"name", "step_class", "params", "inputs": [tensor names], "outputs": [...],
    "optional"?: [inputs a request may leave out]}]``;
    ``outputs``: the tensors the chain returns. Further keyword arguments named
    ``"<op name>.<param>"`` (artifacts and deployment settings) go to that op's constructor.
    """

    def __init__(self, ops: list[dict[str, Any]], outputs: list[str], **op_kwargs: Any):
        names = [op["name"] for op in ops]
        unknown = sorted({key.split(".", 1)[0] for key in op_kwargs} - set(names))
        if unknown or any("." not in key for key in op_kwargs):
            raise InputError(f"chain: arguments {sorted(op_kwargs)} must be '<op>.<param>' for ops {names}")
        self.ops = ops
        self.outputs = list(outputs)
        self.steps = []
        for op in ops:
            kwargs = {key.split(".", 1)[1]: value for key, value in op_kwargs.items()
                      if key.split(".", 1)[0] == op["name"]}
            self.steps.append(import_step_class(op["step_class"])(**op["params"], **kwargs))

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = dict(inputs)
        for op, step in zip(self.ops, self.steps):
            optional = op.get("optional", ())
            missing = [name for name in op["inputs"] if name not in tensors and name not in optional]
            if missing:
                raise InputError(f"input(s) {missing} of step {op['name']} are missing")
            tensors.update(step.execute({name: tensors[name] for name in op["inputs"] if name in tensors}))
        return {name: tensors[name] for name in self.outputs}

    def close(self) -> None:
        for step in self.steps:
            close = getattr(step, "close", None)
            if callable(close):
                close()
