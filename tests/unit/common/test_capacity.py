"""One capacity validator for the agent's register frame and the REST API."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamspace_common.capacity import parse_capacity


def test_clean_capacities_are_normalised():
    assert parse_capacity({}) == {"max_sessions": 0, "max_cpu": 0.0, "max_memory_gb": 0.0}
    assert parse_capacity(None) == parse_capacity({})
    assert parse_capacity({"max_sessions": 3, "max_cpu": 2, "max_memory_gb": 1.5}) == \
        {"max_sessions": 3, "max_cpu": 2.0, "max_memory_gb": 1.5}
    assert parse_capacity({"max_sessions": 4.0}) == {"max_sessions": 4, "max_cpu": 0.0,
                                                     "max_memory_gb": 0.0}


@pytest.mark.parametrize("bad, words", [
    ("4 cores", "must be an object"),
    ([1, 2], "must be an object"),
    ({"max_sessions": "x"}, "capacity.max_sessions must be a number"),
    ({"max_sessions": True}, "capacity.max_sessions must be a number"),
    ({"max_sessions": 1.5}, "whole number"),
    ({"max_sessions": -1}, "between 0 and"),
    ({"max_sessions": 2**2000}, "between 0 and"),
    ({"max_cpu": float("nan")}, "finite"),
    ({"max_cpu": float("inf")}, "finite"),
    ({"max_memory_gb": {"gb": 1}}, "must be a number"),
    ({"cpu": "4000m"}, "unknown field(s) cpu"),
])
def test_malformed_capacities_are_refused_with_the_field_named(bad, words):
    with pytest.raises(ValueError) as e:
        parse_capacity(bad)
    assert words in str(e.value)


ANYTHING = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["max_sessions", "max_cpu", "max_memory_gb", "x"]),
                      inner, max_size=4), max_leaves=8)


@given(ANYTHING)
def test_whatever_arrives_is_a_clean_capacity_or_a_value_error(value):
    try:
        cap = parse_capacity(value)
    except ValueError as e:
        assert str(e).startswith("capacity")
        return
    assert set(cap) == {"max_sessions", "max_cpu", "max_memory_gb"}
    assert isinstance(cap["max_sessions"], int) and cap["max_sessions"] >= 0
    assert all(isinstance(cap[k], float) and cap[k] >= 0 for k in ("max_cpu", "max_memory_gb"))
