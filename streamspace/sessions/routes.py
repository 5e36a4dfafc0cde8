"""The session endpoint that belongs to the VNC path rather than to CRUD:
`POST /api/v1/sessions/{id}/vnc-token`. (The events stream is streamspace.api.session_events.)

It applies the API's rules: a Bearer login token on every request, another user's session
answers 404, errors in the one JSON shape.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from twisted.logger import Logger
from twisted.python.failure import Failure

from streamspace.api import errors
from streamspace.api.auth import authenticate
from streamspace.api.body import is_uuid
from streamspace.db import sessions as session_rows
from streamspace.sessions import states

log = Logger()


async def _owned_session(ctx, request, session_id: str):
    principal = await authenticate(ctx, request)
    if not is_uuid(session_id):
        raise errors.not_found("no such session")
    owner = None if principal.is_admin else principal.user_id
    session = await session_rows.get(ctx.db, session_id, owner_id=owner)
    if session is None:
        raise errors.not_found("no such session")
    return principal, session


def _error(request, failure: Failure) -> bytes:
    return errors.render(request, failure)


class SessionRoutes:
    def __init__(self, ctx, proxy, lifecycle) -> None:
        self.ctx = ctx
        self.proxy = proxy
        self.lifecycle = lifecycle

    async def vnc_token(self, request, session_id: str):
        try:
            principal, session = await _owned_session(self.ctx, request, session_id)
            if session["state"] != states.RUNNING:
                raise errors.conflict("session_not_running",
                                      f"the session is {session['state']}, not running")
        except Exception:
            return _error(request, Failure())
        token, expires = self.proxy.issue_token(principal.user_id, str(session["id"]))
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps({
            "token": token,
            "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
            "url": f"/api/v1/vnc/{session['id']}?token={token}",
        }).encode()
