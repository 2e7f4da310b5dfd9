"""Hypothesis on single-request transforms (issue 11): any JSON value for any column (strings, huge
ints, floats, NaN, None, lists, nested objects, unicode) gives encoded values (an unseen value is
OOV) or an :class:`InputError` naming the column, never another exception.

Two workflows: one holding every op kind (fitted on a small frame here) and the ML-100K run's
saved workflow, the one serving encodes raw requests with. Each test prints the number of cases
tried and how each ended (the README's bad-input table)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_workflows_ops import all_ops_workflow

from recstack.errors import InputError
from recstack.workflows import Workflow

EXAMPLES = 400

JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-(2 ** 70), 2 ** 70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
                | st.sampled_from(["", "NaN", "1e309", "-0", "２", "\x00", "a" * 10_000, "🙂", "1,5"]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def requests_for(columns: list[str]) -> st.SearchStrategy[dict]:
    """Objects holding every input column, or some of them and unknown keys, with any JSON values."""
    key = st.sampled_from(columns) | st.text(max_size=12)
    every_column = st.fixed_dictionaries({c: JSON_VALUES for c in columns})
    return every_column | st.dictionaries(key, JSON_VALUES, max_size=len(columns) + 2)


def check_encoded(workflow: Workflow, out: dict) -> None:
    """Encoded output: every categorical code inside its column's cardinality (OOV included)."""
    schema = workflow.output_schema
    for name, value in out.items():
        cardinality = getattr(schema[name], "cardinality", None) if name in schema else None
        if cardinality:
            codes = np.asarray(value, dtype=object).ravel().tolist() if isinstance(value, list) else [value]
            for code in codes:
                assert isinstance(code, (int, np.integer)) and 0 <= int(code) < cardinality, (name, value)


def fuzz(workflow: Workflow, outcomes: Counter):
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(row=requests_for(workflow.input_columns), strict=st.booleans())
    def run(row: dict, strict: bool) -> None:
        try:
            out = workflow.transform_request(row, strict=strict, complete=strict)
        except InputError as exc:
            message = str(exc)
            assert message and "\n" not in message, message
            assert any(repr(k) in message or str(k) in message for k in row) or "request" in message, message
            outcomes["InputError"] += 1
            return
        if out is None:
            outcomes["dropped by a Filter"] += 1
            return
        check_encoded(workflow, out)
        outcomes["encoded"] += 1

    run()


def report(label: str, outcomes: Counter) -> None:
    print(f"\n{label}: {sum(outcomes.values())} requests tried: " +
          ", ".join(f"{kind} {n}" for kind, n in sorted(outcomes.items())) + ", other exceptions 0")


@pytest.fixture(scope="module")
def every_op_workflow() -> Workflow:
    train = pd.DataFrame([
        {"user": i % 5, "item": i % 13, "cat": "abc"[i % 3], "x": float(i) - 3.5, "ts": 1_600_000_000 + 3600 * i,
         "genres": ["A", "B", "C"][: i % 4], "y": float(i % 2)} for i in range(40)])
    return all_ops_workflow(train)


def test_any_json_value_in_any_column_of_every_op(every_op_workflow):
    outcomes: Counter = Counter()
    fuzz(every_op_workflow, outcomes)
    report("every-op workflow", outcomes)
    assert sum(outcomes.values()) >= EXAMPLES and outcomes["encoded"] > 0 and outcomes["InputError"] > 0


@pytest.mark.e2e
def test_any_json_value_in_any_column_of_the_served_workflow(e2e_paths):
    workflow = Workflow.load(e2e_paths.workflow)
    outcomes: Counter = Counter()
    fuzz(workflow, outcomes)
    report("ML-100K workflow", outcomes)
    assert sum(outcomes.values()) >= EXAMPLES and outcomes["encoded"] > 0


def test_hostile_values_one_by_one(every_op_workflow):
    """The values most likely to break a cast, each in each column, for a readable failure."""
    hostile = [None, math.nan, math.inf, -math.inf, 2 ** 64, -(2 ** 63) - 1, 10 ** 400, "", "x" * 100_000,
               "🙂", [], [1, [2]], {"a": 1}, True, 1e308, -0.0]
    outcomes: Counter = Counter()
    for column in every_op_workflow.input_columns:
        for value in hostile:
            row = {"user": 1, "item": 2, "cat": "a", "x": 0.5, "ts": 1_650_000_000, "genres": ["A"], "y": 1.0}
            row[column] = value
            try:
                out = every_op_workflow.transform_request(row)
            except InputError as exc:
                assert column in str(exc), (column, value, str(exc))
                outcomes["InputError"] += 1
                continue
            if out is not None:
                check_encoded(every_op_workflow, out)
            outcomes["encoded"] += 1
    report("hostile values", outcomes)
