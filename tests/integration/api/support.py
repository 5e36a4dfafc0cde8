"""Test support for the REST API: a real listening server, an HTTP client that checks
every response against the OpenAPI document, and fast ways to create fixtures."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import treq
from jsonschema import Draft202012Validator
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from streamspace.api.openapi import document
from streamspace.auth import passwords, tokens
from streamspace.db import agents as agents_db
from streamspace.db import sessions as sessions_db
from streamspace.db import templates as templates_db
from streamspace.db import users as users_db

SECRET = "test-secret-" + "x" * 40
PASSWORD = "correct horse battery"

_DOC = document()
_ROUTES: list[tuple[re.Pattern, str]] = [
    (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p) for p in _DOC["paths"]
]


def _validator(schema: dict) -> Draft202012Validator:
    return Draft202012Validator({**schema, "components": _DOC["components"]})


def check_against_openapi(method: str, path: str, status: int, body: bytes) -> None:
    """Every response must be documented: its route, its status (or `default`), its shape."""
    bare = path.split("?")[0]
    assert bare.startswith("/api/v1/"), path
    rel = bare[len("/api/v1"):]
    template = next((t for rx, t in _ROUTES if rx.match(rel)), None)
    if template is None or method.lower() not in _DOC["paths"][template]:
        assert status in (404, 405), f"{method} {path} answered {status} but is undocumented"
        schema = {"$ref": "#/components/schemas/Error"}
    else:
        op = _DOC["paths"][template][method.lower()]
        response = op["responses"].get(str(status)) or op["responses"]["default"]
        content = response.get("content")
        if content is None:
            assert body == b"", f"{method} {path} {status}: expected no body, got {body[:200]!r}"
            return
        if "application/json" not in content:
            return  # e.g. the text/event-stream of session events
        schema = content["application/json"]["schema"]
    payload = json.loads(body)
    errors = sorted(_validator(schema).iter_errors(payload), key=str)
    assert not errors, (f"{method} {path} -> {status} does not match the OpenAPI document: "
                        f"{errors[0].message} at {list(errors[0].absolute_path)}")


def _free_form_text(sent: bytes) -> str:
    """The request's JSON without any *password* field, as text: a secret found there was
    put in a free-form field by the caller, so the API may rightly return it."""
    try:
        body = json.loads(sent) if sent else None
    except (ValueError, RecursionError):  # bodies the tests make malformed on purpose
        return ""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if "password" not in str(k)}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    try:
        return json.dumps(strip(body), ensure_ascii=False)
    except RecursionError:
        return ""


@dataclass
class Response:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        try:
            return self.json["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


@dataclass
class Client:
    base: str
    secrets: set[str] = field(default_factory=lambda: {PASSWORD})
    pool: HTTPConnectionPool = field(
        default_factory=lambda: HTTPConnectionPool(reactor, persistent=False))
    validate: bool = True
    allow_500: bool = False

    async def request(self, method: str, path: str, *, json_body: Any = None,
                      raw: bytes | None = None, token: str | None = None,
                      headers: dict[str, str] | None = None) -> Response:
        hdrs = dict(headers or {})
        data = raw
        if json_body is not None:
            data = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        resp = await treq.request(method, self.base + path, data=data,
                                  headers={k: [v] for k, v in hdrs.items()}, pool=self.pool)
        body = await treq.content(resp)
        result = Response(resp.code, resp.headers, body)
        self.check(method, path, result, sent=data or b"")
        return result

    def check(self, method: str, path: str, result: Response, sent: bytes = b"") -> None:
        assert result.status < 500 or result.status == 503 or self.allow_500, \
            f"{method} {path} -> {result.status}: {result.body[:500]!r}"
        if result.body:
            assert result.header("Content-Type") in (
                "application/json", "text/event-stream"), result.headers
        echoed = _free_form_text(sent)
        for secret in self.secrets:
            if secret in echoed:
                continue  # sent in a free-form field (metadata, env...): an echo, not a leak
            assert secret.encode() not in result.body, f"a password leaked from {path}"
        assert b"$argon2" not in result.body and b"password_hash" not in result.body
        assert b"token_hash" not in result.body
        if result.status >= 400:
            assert set(result.json) == {"error"}, result.body
            assert set(result.json["error"]) == {"code", "message"}, result.body
        if self.validate:
            check_against_openapi(method, path, result.status, result.body)

    async def get(self, path, **kw):
        return await self.request("GET", path, **kw)

    async def post(self, path, body=None, **kw):
        return await self.request("POST", path, json_body=body, **kw)

    async def patch(self, path, body=None, **kw):
        return await self.request("PATCH", path, json_body=body, **kw)

    async def delete(self, path, **kw):
        return await self.request("DELETE", path, **kw)


# --- fast fixtures straight into the database ---------------------------------------

async def make_user(db, username: str, *, role: str = "user", password: str = PASSWORD,
                    disabled: bool = False, max_sessions: int | None = None) -> dict:
    password_hash = await passwords.hash_password(reactor, password)

    async def work(cursor):
        user = await users_db.create(cursor, username=username, password_hash=password_hash,
                                     role=role, display_name=username.title(), email="",
                                     max_sessions=max_sessions)
        if disabled:
            user = await users_db.update(cursor, user["id"], {"disabled": True})
        return user

    return await db.transaction(work)


def token_for(user: dict, *, lifetime: float = 3600.0, now: float | None = None,
              typ: str = tokens.LOGIN) -> str:
    at = reactor.seconds() if now is None else now
    token, _ = tokens.issue(SECRET, typ=typ, sub=user["id"], role=user["role"], now=at,
                            lifetime=lifetime)
    return token


TEMPLATE = {
    "name": "terminal", "display_name": "Terminal", "description": "", "icon": "",
    "category": "dev", "vnc_port": 5901, "cpu": 0.5, "memory_mb": 512, "env": {},
    "persistent_home": False, "platforms": {"local": {"command": "xterm"},
                                            "kubernetes": {"image": "example/terminal"}},
}


async def make_template(db, **overrides) -> dict:
    fields = {**TEMPLATE, **overrides}
    return await db.transaction(lambda cursor: templates_db.create(cursor, fields))


async def make_session(db, user: dict, template: dict, *, state: str = "pending",
                       agent_uuid: str | None = None) -> str:
    async def work(cursor):
        sid = await sessions_db.insert(
            cursor, user_id=user["id"], template_id=template["id"],
            template_name=template["name"], name="s", state=state, requested_platform=None,
            requested_region=None)
        if agent_uuid is not None:
            await cursor.execute("UPDATE sessions SET agent_id = %s, platform = 'local' "
                                 "WHERE id = %s", (agent_uuid, sid))
        return sid

    return await db.transaction(work)


async def make_agent(db, agent_id: str = "agent-1", platform: str = "local",
                     token_hash: str = "0" * 64) -> str:
    return await db.transaction(lambda cursor: agents_db.create(
        cursor, agent_id=agent_id, platform=platform, region="here",
        capacity={"max_sessions": 10}, metadata={}, token_hash=token_hash))


async def count(db, table: str, where: str = "TRUE", params: tuple = ()) -> int:
    rows = await db.query(f"SELECT count(*) FROM {table} WHERE {where}", params)
    return int(rows[0][0])
