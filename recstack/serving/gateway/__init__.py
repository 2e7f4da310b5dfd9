"""The REST gateway apps call (`recstack gateway`): recommendations with titles, events in, new
users, similar items, health and Prometheus metrics, in front of the Triton ensemble and the
event log. See :func:`create_app` and the README's "Gateway" section."""

from recstack.lazy import lazy_exports

_EXPORTS = {"GatewayConfig": "config", "create_app": "app"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
