"""Session endpoints that belong to the lifecycle rather than to CRUD:
`GET /api/v1/sessions/{id}/events` (SSE). (The VNC token route is streamspace.api.vnc.)

It applies the API's rules: a Bearer login token on every request, another user's session
answers 404, errors in the one JSON shape.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamspace.api import errors
from streamspace.api.auth import authenticate
from streamspace.api.body import is_uuid
from streamspace.db import sessions as session_rows
from streamspace.sessions import states

log = Logger()

KEEPALIVE_SECONDS = 5.0
POLL_SECONDS = 2.0  # events also come from other processes: re-read at least this often
END_STATES = (states.RUNNING, states.FAILED, states.TERMINATED, states.HIBERNATED)


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
    def __init__(self, ctx, lifecycle) -> None:
        self.ctx = ctx
        self.lifecycle = lifecycle

    async def events(self, request, session_id: str):
        """Server-Sent Events: every progress event, then live ones, ending at a settled
        state (running, failed, terminated, hibernated); keepalive comments meanwhile."""
        try:
            _, session = await _owned_session(self.ctx, request, session_id)
        except Exception:
            return _error(request, Failure())
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.write(b": streamspace session events\n\n")
        stream = _EventStream(self.ctx, request, str(session["id"]), self.lifecycle)
        await stream.run()
        return b""


class _EventStream:
    def __init__(self, ctx, request, session_id: str, lifecycle) -> None:
        self.ctx = ctx
        self.request = request
        self.session_id = session_id
        self.lifecycle = lifecycle
        self.last_id = 0
        self.gone = False
        self.wake: defer.Deferred | None = None

    def _notify(self, session_id: str) -> None:
        if session_id == self.session_id and self.wake is not None and not self.wake.called:
            self.wake.callback(None)

    async def run(self) -> None:
        self.request.notifyFinish().addBoth(self._finished)
        if self.lifecycle is not None:
            self.lifecycle.listeners.append(self._notify)
        keepalive = task.LoopingCall(self._keepalive)
        keepalive.clock = self.ctx.reactor
        keepalive.start(KEEPALIVE_SECONDS, now=False)
        try:
            while not self.gone:
                if await self._flush():
                    break
                self.wake = defer.Deferred()
                self.wake.addTimeout(POLL_SECONDS, self.ctx.reactor, onTimeoutCancel=lambda *_: None)
                await self.wake
        finally:
            keepalive.stop()
            if self.lifecycle is not None and self._notify in self.lifecycle.listeners:
                self.lifecycle.listeners.remove(self._notify)

    async def _flush(self) -> bool:
        """Send new events; True when the stream reached a settled state and is done."""
        events = await session_rows.events(self.ctx.db, self.session_id)
        done = False
        for event in events:
            if event["id"] <= self.last_id:
                continue
            self.last_id = event["id"]
            self._send(event)
        session = await session_rows.get(self.ctx.db, self.session_id)
        if session is None:
            self._send({"id": self.last_id, "state": "terminated", "message": "deleted",
                        "created_at": datetime.now(UTC)})
            return True
        if session["state"] in END_STATES:
            done = True
        return done

    def _send(self, event: dict) -> None:
        if self.gone:
            return
        data = json.dumps({"state": event["state"], "message": event["message"],
                           "at": event["created_at"]}, default=str)
        self.request.write(f"id: {event['id']}\nevent: state\ndata: {data}\n\n".encode())

    def _keepalive(self) -> None:
        if not self.gone:
            self.request.write(b": keepalive\n\n")

    def _finished(self, _) -> None:
        self.gone = True
        self._notify(self.session_id)
