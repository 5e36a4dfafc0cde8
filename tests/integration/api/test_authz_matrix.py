"""The authorization matrix: every route x every kind of caller.

Callers: admin, owner (a user who owns the target session), other (another user),
anonymous, disabled user, expired token, revoked token, tampered token. Every attempt
gets fresh targets, so one caller's change cannot mask another's result.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
import pytest_twisted
from twisted.internet import reactor

from streamspace.api.app import ROUTES
from streamspace.auth import agent_tokens
from tests.integration.api.support import (
    PASSWORD,
    SECRET,
    make_agent,
    make_session,
    make_template,
    make_user,
    token_for,
)

GOOD = ("admin", "owner", "other")
BAD = ("anonymous", "disabled", "expired", "revoked", "tampered")
_n = itertools.count()


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_n)}"


@dataclass
class World:
    db: Any
    admin: dict
    owner: dict
    other: dict
    disabled: dict
    template: dict

    async def token(self, who: str) -> str | None:
        if who == "anonymous":
            return None
        if who == "expired":
            return token_for(self.owner, now=reactor.seconds() - 100, lifetime=50)
        if who == "tampered":
            # read the claims only (iat is rounded to the millisecond, so it may lie a
            # fraction of a millisecond in pyjwt's future)
            claims = jwt.decode(token_for(self.owner), SECRET, algorithms=["HS256"],
                                options={"verify_iat": False})
            claims["role"] = "admin"
            claims["sub"] = self.admin["id"]
            head, _, sig = token_for(self.owner).split(".")
            body = jwt.encode(claims, SECRET, algorithm="HS256").split(".")[1]
            return f"{head}.{body}.{sig}"  # the admin's claims under the owner's signature
        if who == "revoked":
            token = token_for(self.owner)
            jti = jwt.decode(token, SECRET, algorithms=["HS256"],
                             options={"verify_iat": False})["jti"]
            await self.db.execute("INSERT INTO revoked_tokens (jti, expires_at) "
                                  "VALUES (%s, now() + interval '1 hour')", (jti,))
            return token
        return token_for({"admin": self.admin, "owner": self.owner, "other": self.other,
                          "disabled": self.disabled}[who])

    async def session(self, state: str = "running") -> str:
        return await make_session(self.db, self.owner, self.template, state=state,
                                  agent_uuid=await make_agent(self.db, fresh("agent-")))


Path = Callable[[World], Awaitable[str]]


def static(path: str) -> Path:
    async def make(world: World) -> str:
        return path
    return make


async def a_session(world: World) -> str:
    return f"/api/v1/sessions/{await world.session()}"


async def a_victim(world: World) -> str:
    victim = await make_user(world.db, fresh("victim"))
    return f"/api/v1/users/{victim['id']}"


async def a_template(world: World) -> str:
    t = await make_template(world.db, name=fresh("tpl-"))
    return f"/api/v1/templates/{t['name']}"


async def an_agent(world: World) -> str:
    agent_id = fresh("agent-")
    await make_agent(world.db, agent_id)
    return f"/api/v1/agents/{agent_id}"


def body(make: Callable[[], Any] | Any = None) -> Callable[[], Any]:
    return make if callable(make) else (lambda: make)


ADMIN_ONLY = {"admin": None, "owner": 403, "other": 403}
ANY_USER = {"admin": None, "owner": None, "other": None}
OWNER = {"admin": None, "owner": None, "other": 404}

# endpoint -> (path factory, body factory, expectations for GOOD callers: None = success)
MATRIX: dict[str, tuple[Path, Callable[[], Any], dict[str, int | None]]] = {
    "auth.refresh": (static("/api/v1/auth/refresh"), body(), ANY_USER),
    "auth.logout": (static("/api/v1/auth/logout"), body(), ANY_USER),
    "auth.me": (static("/api/v1/auth/me"), body(), ANY_USER),
    "auth.password": (static("/api/v1/auth/password"),
                      body({"current_password": PASSWORD, "new_password": "n3w-password!"}),
                      ANY_USER),
    "users.list": (static("/api/v1/users"), body(), ADMIN_ONLY),
    "users.create": (static("/api/v1/users"),
                     body(lambda: {"username": fresh("new"), "password": PASSWORD}),
                     ADMIN_ONLY),
    "users.get": (a_victim, body(), ADMIN_ONLY),
    "users.update": (a_victim, body({"display_name": "Renamed"}), ADMIN_ONLY),
    "users.delete": (a_victim, body(), ADMIN_ONLY),
    "templates.list": (static("/api/v1/templates"), body(), ANY_USER),
    "templates.create": (static("/api/v1/templates"),
                         body(lambda: {"name": fresh("new-"), "display_name": "New"}),
                         ADMIN_ONLY),
    "templates.get": (a_template, body(), ANY_USER),
    "templates.update": (a_template, body({"description": "changed"}), ADMIN_ONLY),
    "templates.delete": (a_template, body(), ADMIN_ONLY),
    "sessions.list": (static("/api/v1/sessions"), body(), ANY_USER),
    "sessions.create": (static("/api/v1/sessions"), body({"template": "terminal"}), ANY_USER),
    "sessions.get": (a_session, body(), OWNER),
    "sessions.update": (a_session, body({"state": "hibernated"}), OWNER),
    "sessions.delete": (a_session, body(), OWNER),
    # a running session: the stream replays its events and ends (it has settled)
    "sessions.events": (lambda w: _suffix(a_session(w), "/events"), body(), OWNER),
    "sessions.vnc_token": (lambda w: _suffix(a_session(w), "/vnc-token"), body(), OWNER),
    "agents.list": (static("/api/v1/agents"), body(), ADMIN_ONLY),
    "agents.create": (static("/api/v1/agents"),
                      body(lambda: {"agent_id": fresh("new-agent-"), "platform": "local"}),
                      ADMIN_ONLY),
    "agents.get": (an_agent, body(), ADMIN_ONLY),
    "agents.delete": (an_agent, body(), ADMIN_ONLY),
    "agents.token": (lambda w: _suffix(an_agent(w), "/token"), body(), ADMIN_ONLY),
    # only an agent's own token registers it: every login token is refused
    "agents.register": (static("/api/v1/agents/register"),
                        body({"agent_id": "agent-x", "platform": "local"}),
                        {"admin": 401, "owner": 401, "other": 401}),
    "audit.list": (static("/api/v1/audit"), body(), ADMIN_ONLY),
}
PUBLIC = {"auth.login", "openapi"}


async def _suffix(path: Awaitable[str], suffix: str) -> str:
    return await path + suffix


def test_matrix_covers_every_route():
    assert set(MATRIX) | PUBLIC == {endpoint for _, _, _, endpoint in ROUTES}


async def _world(db) -> World:
    admin = await make_user(db, "root", role="admin")
    owner = await make_user(db, "owner", max_sessions=100)
    other = await make_user(db, "other", max_sessions=100)
    disabled = await make_user(db, "gone", disabled=True)
    template = await make_template(db)
    await make_user(db, "admin2", role="admin")  # so admin changes never hit last_admin
    return World(db, admin, owner, other, disabled, template)


_METHODS = {endpoint: method for method, _, _, endpoint in ROUTES}


@pytest.mark.parametrize("endpoint", sorted(MATRIX))
@pytest_twisted.ensureDeferred
async def test_route(endpoint, client, db):
    world = await _world(db)
    make_path, make_body, good = MATRIX[endpoint]
    method = _METHODS[endpoint]
    outcomes = {}
    for who in GOOD + BAD:
        path = await make_path(world)
        r = await client.request(method, path, json_body=make_body(),
                                 token=await world.token(who))
        outcomes[who] = r.status
        expected = good.get(who) if who in GOOD else 401
        if expected is None:
            assert 200 <= r.status < 300, (endpoint, who, r.status, r.body)
        else:
            assert r.status == expected, (endpoint, who, r.status, r.body)
    assert outcomes


@pytest_twisted.ensureDeferred
async def test_public_routes(client, db):
    world = await _world(db)
    for who in GOOD + BAD:
        token = await world.token(who)
        r = await client.get("/api/v1/openapi.json", token=token)
        assert r.status == 200 and r.json["openapi"].startswith("3.1")
        r = await client.post("/api/v1/auth/login", {"username": "owner", "password": PASSWORD},
                              token=token)
        assert r.status == 200  # a (bad) token on login is ignored


@pytest_twisted.ensureDeferred
async def test_agent_token_is_not_a_login_token(client, db):
    await _world(db)
    token = agent_tokens.generate()
    await make_agent(db, "agent-x", token_hash=agent_tokens.hash_token(token))
    client.secrets.add(token)
    assert (await client.get("/api/v1/auth/me", token=token)).status == 401
    assert (await client.post("/api/v1/agents/register",
                              {"agent_id": "agent-x", "platform": "local"}, token=token)
            ).status == 200
