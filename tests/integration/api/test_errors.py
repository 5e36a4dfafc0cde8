"""Bad input of every kind is a clear 4xx in the one error shape, and changes nothing."""

from __future__ import annotations

import pytest_twisted

from tests.integration.api.support import count, make_template, make_user, token_for


@pytest_twisted.ensureDeferred
async def test_malformed_bodies(client, db):
    alice = await make_user(db, "alice")
    await make_template(db)
    token = token_for(alice)
    json_type = {"Content-Type": "application/json"}
    cases = [
        (b"", 400, "invalid_json"),
        (b"{", 400, "invalid_json"),
        (b"[]", 400, "invalid_json"),
        (b'"terminal"', 400, "invalid_json"),
        (b"\xff\xfe{}", 400, "invalid_json"),
        (b'{"template": NaN}', 400, "invalid_json"),
        (b'{"template": "terminal", "name": 1e400}', 400, "invalid_json"),
        (b'{"template": "terminal", "name": "a\\u0000b"}', 400, "invalid_request"),
        (b'{"template": "terminal", "name": "\\ud800"}', 400, "invalid_request"),
        (b'{"template": "terminal", "\\u0000": 1}', 400, "invalid_request"),
        (b"[" * 100000 + b"]" * 100000, 413, "payload_too_large"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, 400, "invalid_json"),
        (b'{"template": "terminal", "name": "' + b"x" * 70000 + b'"}', 413,
         "payload_too_large"),
        (b'{"template": ["terminal"]}', 400, "invalid_request"),
        (b'{"template": "terminal", "nmae": "typo"}', 400, "invalid_request"),
    ]
    for raw, status, code in cases:
        r = await client.request("POST", "/api/v1/sessions", raw=raw, token=token,
                                 headers=json_type)
        assert (r.status, r.code) == (status, code), (raw[:60], r.body)
    r = await client.request("POST", "/api/v1/sessions", raw=b"template: terminal", token=token,
                             headers={"Content-Type": "text/plain"})
    assert r.status == 415 and r.code == "unsupported_media_type"
    # curl -d sends a form type: the body must still be JSON
    r = await client.request("POST", "/api/v1/sessions", raw=b"template=terminal", token=token,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 400 and r.code == "invalid_json"
    typo = await client.post("/api/v1/sessions", {"template": "terminal", "nmae": "x"},
                             token=token)
    assert "`nmae`" in typo.json["error"]["message"]
    wrong = await client.post("/api/v1/sessions", {"template": 7}, token=token)
    assert wrong.json["error"]["message"] == "`template` must be a string"
    assert await count(db, "sessions") == 0 and await count(db, "audit_log") == 0
    # no Content-Type, or curl's default for -d, is read as JSON
    ok = await client.request("POST", "/api/v1/sessions", raw=b'{"template": "terminal"}',
                              token=token)
    assert ok.status == 201
    ok = await client.request("POST", "/api/v1/sessions", raw=b'{"template": "terminal"}',
                              token=token,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert ok.status == 201


@pytest_twisted.ensureDeferred
async def test_unknown_routes_and_methods_are_json(client, db):
    token = token_for(await make_user(db, "alice"))
    r = await client.get("/api/v1/nothing-here", token=token)
    assert r.status == 404 and r.code == "not_found"
    r = await client.request("PUT", "/api/v1/sessions", token=token)
    assert r.status == 405 and r.code == "method_not_allowed"
    assert set(r.header("Allow").split(", ")) >= {"GET", "POST"}
    r = await client.request("DELETE", "/api/v1/auth/login")
    assert r.status == 405


@pytest_twisted.ensureDeferred
async def test_database_down_is_503(client, db):
    token = token_for(await make_user(db, "alice"))
    db.close()
    for method, path, body in (("GET", "/api/v1/auth/me", None),
                               ("POST", "/api/v1/auth/login",
                                {"username": "alice", "password": "whatever"}),
                               ("GET", "/api/v1/sessions", None)):
        r = await client.request(method, path, json_body=body, token=token)
        assert r.status == 503 and r.code == "database_unavailable", (path, r.body)
        assert r.header("Retry-After")
