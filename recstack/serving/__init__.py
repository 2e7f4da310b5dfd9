"""Serving: run a real tritonserver, write python/ensemble model repositories, call them.

* ``tritonserver``  -- :class:`TritonServer` (start/stop, free loopback ports, log tail on failure)
* ``model_repo``    -- :class:`TensorSpec`, ``write_python_model``, ``write_ensemble_model``
* ``python_model``  -- the generic Triton python-backend model that serves a step class
* ``triton_io``     -- DLPack-only tensor I/O inside the python backend (numpy-2 safe)
* ``client``        -- :class:`TritonClient` (gRPC/HTTP, numpy in and out)
* ``examples``      -- tiny check steps; ``cli`` -- ``recstack triton check|serve``
"""
