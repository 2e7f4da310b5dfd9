"""schemathesis against the gateway's own OpenAPI schema, on the live gateway (real Triton, online
store and event log): every generated request gets a documented answer, never a 5xx."""

from __future__ import annotations

from collections import Counter

import pytest

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 30


def test_no_generated_request_gets_a_5xx(gateway_url):
    import hypothesis
    import schemathesis
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{gateway_url}/openapi.json")
    tried: dict[str, int] = {}
    statuses: Counter = Counter()
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck), derandomize=True)
        @hypothesis.given(case=operation.as_strategy())
        def run(case) -> None:
            tried[operation.label] = tried.get(operation.label, 0) + 1
            response = case.call(base_url=gateway_url, timeout=30)
            statuses[f"{response.status_code // 100}xx"] += 1
            if response.status_code >= 500:
                failures.append(f"{operation.label}: {response.status_code} {response.text[:200]}")
            case.validate_response(response, checks=(not_a_server_error,))

        run()
    print("schemathesis cases per operation:", tried, "total", sum(tried.values()), "answers", dict(statuses))
    assert not failures, failures
    assert len(tried) >= 7 and sum(tried.values()) >= 7 * 10
