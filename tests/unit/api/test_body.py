"""Body and query parsing: the checks that keep bad input from ever reaching PostgreSQL."""

from __future__ import annotations

import io

import pytest

from streamspace.api.body import (
    MAX_BODY_BYTES,
    Field,
    is_uuid,
    query_int,
    query_time,
    read_json,
    validate,
)
from streamspace.api.errors import ApiError


class FakeRequest:
    def __init__(self, body: bytes = b"", headers: dict | None = None, args=None) -> None:
        self.content = io.BytesIO(body)
        self.headers = {k.lower().encode(): v.encode() for k, v in (headers or {}).items()}
        self.args = args or {}

    def getHeader(self, name: bytes):
        return self.headers.get(name.lower())


def status(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ApiError as e:
        return e.status, e.message
    return 200, ""


@pytest.mark.parametrize("raw, expected", [
    (b'{"a": 1}', 200), (b" ", 400), (b"null", 400), (b"1", 400), (b'{"a": Infinity}', 400),
    (b'{"a": -1e999}', 400), (b'{"a": "\\u0000"}', 400), (b'{"\\udfff": 1}', 400),
    (b'{"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}', 400),
    (b"\xc3\x28", 400), (b"x" * (MAX_BODY_BYTES + 1), 413),
])
def test_read_json(raw, expected):
    assert status(read_json, FakeRequest(raw))[0] == expected


def test_content_length_and_type():
    big = FakeRequest(b"{}", {"Content-Length": str(MAX_BODY_BYTES + 1)})
    assert status(read_json, big)[0] == 413
    assert status(read_json, FakeRequest(b"{}", {"Content-Length": "x"}))[0] == 400
    assert status(read_json, FakeRequest(b"{}", {"Content-Type": "text/plain"}))[0] == 415
    assert read_json(FakeRequest(b"{}", {"Content-Type": "application/json; charset=utf-8"})) \
        == {}
    assert read_json(FakeRequest(b"{}", {"Content-Type": "application/merge-patch+json"})) == {}
    assert read_json(FakeRequest(b"{}", {"Content-Type": "application/x-www-form-urlencoded"})) \
        == {}
    assert status(read_json, FakeRequest(b"{}", {"Content-Type": "multipart/form-data"}))[0] \
        == 415


FIELDS = {
    "name": Field("string", required=True, max_len=5, pattern=r"[a-z]+"),
    "count": Field("integer", min=0, max=10),
    "ratio": Field("number", min=0.5),
    "flag": Field("boolean"),
    "limit": Field("integer", nullable=True),
    "env": Field("string_map"),
    "kind": Field("string", choices=("a", "b")),
}


@pytest.mark.parametrize("body, fragment", [
    ({}, "`name` is required"),
    ({"name": "abc", "extra": 1}, "unknown field(s): `extra`"),
    ({"name": 5}, "`name` must be a string"),
    ({"name": "abcdef"}, "at most 5"),
    ({"name": "ABC"}, "`name` has an invalid format"),
    ({"name": "a", "count": True}, "`count` must be an integer"),
    ({"name": "a", "count": 1.0}, "`count` must be an integer"),
    ({"name": "a", "count": 11}, "`count` must be at most 10"),
    ({"name": "a", "ratio": "1"}, "`ratio` must be a number"),
    ({"name": "a", "ratio": 0.1}, "`ratio` must be at least 0.5"),
    ({"name": "a", "flag": 1}, "`flag` must be true or false"),
    ({"name": "a", "count": None}, "`count` must not be null"),
    ({"name": "a", "env": {"A B": "x"}}, "not a valid variable name"),
    ({"name": "a", "env": {"A": 1}}, "`env.A` must be a string"),
    ({"name": "a", "kind": "c"}, "`kind` must be one of: a, b"),
])
def test_validate_names_the_field(body, fragment):
    code, message = status(validate, body, FIELDS)
    assert code == 400 and fragment in message, message


def test_validate_accepts_and_partial():
    ok = validate({"name": "ab", "count": 3, "ratio": 1, "flag": False, "limit": None,
                   "env": {"A_1": "x"}, "kind": "b"}, FIELDS)
    assert ok["limit"] is None and ok["ratio"] == 1
    assert validate({"count": 2}, FIELDS, partial=True) == {"count": 2}
    assert status(validate, {}, FIELDS, partial=True)[0] == 400


def test_queries_and_ids():
    req = FakeRequest(args={b"limit": [b"5"], b"since": [b"2026-01-01T00:00:00 00:00"],
                            b"bad": [b"\xff"], b"until": [b"2026-01-01"]})
    assert query_int(req, "limit", default=1, low=1, high=10) == 5
    assert query_int(req, "other", default=7, low=1, high=10) == 7
    assert query_time(req, "since").utcoffset().total_seconds() == 0  # '+' arrived as ' '
    assert query_time(req, "until").tzinfo is not None
    assert status(query_int, req, "bad", default=1, low=1, high=2)[0] == 400
    assert is_uuid("6f1c2a4e-0c1b-4b8e-9a53-2f1d0f7f8a11")
    for bad in ("x", "6f1c2a4e0c1b4b8e9a532f1d0f7f8a11", "{6f1c2a4e-0c1b-4b8e-9a53-2f1d0f7f8a11}"):
        assert not is_uuid(bad)
