"""A small tritonclient wrapper: numpy in, numpy out, server errors as recstack exceptions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


class TritonRequestError(RuntimeError):
    """The server answered a request with an error; ``str(exc)`` is the server's message."""

    def __init__(self, message: str, status: str | None = None, model: str | None = None):
        super().__init__(message)
        self.status = status
        self.model = model


class TritonClient:
    """Client for one Triton server over gRPC (default) or HTTP.

    ``url`` is ``host:port`` (a leading ``http://``/``grpc://`` is stripped).
    ``timeout_s`` bounds each call (connection + inference).
    """

    def __init__(self, url: str, protocol: str = "grpc", timeout_s: float = 30.0) -> None:
        from tritonclient.utils import InferenceServerException  # noqa: PLC0415

        self._exc_type = InferenceServerException
        for prefix in ("http://", "https://", "grpc://"):
            if url.startswith(prefix):
                url = url[len(prefix):]
        protocol = protocol.lower()
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol: {protocol!r} must be 'grpc' or 'http'")
        self.url, self.protocol, self.timeout_s = url, protocol, float(timeout_s)
        if protocol == "grpc":
            import tritonclient.grpc as module  # noqa: PLC0415

            self._client = module.InferenceServerClient(url=url)
        else:
            import tritonclient.http as module  # noqa: PLC0415

            self._client = module.InferenceServerClient(
                url=url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
            )
        self._module = module
        self._closed = False

    def _call(self, fn, *args, model: str | None = None, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self._exc_type as exc:
            message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
            status = exc.status() if callable(getattr(exc, "status", None)) else None
            raise TritonRequestError(str(message), status=status, model=model) from None

    def _timeout_kw(self) -> dict:
        return {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

    def is_ready(self, model: str | None = None) -> bool:
        """Whether the server (or ``model``) is ready; False when unreachable."""
        try:
            if model is None:
                return bool(self._client.is_server_ready(**self._timeout_kw()))
            return bool(self._client.is_model_ready(model, **self._timeout_kw()))
        except Exception:  # noqa: BLE001  unreachable / refused -> not ready
            return False

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Iterable[str],
    ) -> dict[str, np.ndarray]:
        """Send ``inputs`` (name -> array, batch dimension first) and return the named outputs."""
        from tritonclient.utils import np_to_triton_dtype  # noqa: PLC0415

        infer_inputs = []
        for name, value in inputs.items():
            arr = np.ascontiguousarray(value)
            item = self._module.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            item.set_data_from_numpy(arr)
            infer_inputs.append(item)
        output_names = list(output_names)
        requested = [self._module.InferRequestedOutput(n) for n in output_names]
        result = self._call(
            self._client.infer, model, infer_inputs, outputs=requested, model=model, **self._timeout_kw()
        )
        out = {}
        for name in output_names:
            arr = result.as_numpy(name)
            if arr is None:
                raise TritonRequestError(f"model {model}: response has no output {name!r}", model=model)
            out[name] = arr
        return out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    def __enter__(self) -> "TritonClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
