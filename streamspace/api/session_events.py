"""GET /sessions/{id}/events: a session's progress as Server-Sent Events.

Every event so far, then live ones, ending once the session settles (running, failed,
stopped, terminated, hibernated); keepalive comments meanwhile. Live events come from the
session lifecycle's notifications (`ctx.extras["lifecycle"]`), and the stream re-reads the
database at least every 2 s for changes made by other processes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from twisted.internet import defer, task

from streamspace.api.body import is_uuid
from streamspace.api.errors import not_found
from streamspace.db import sessions as session_rows
from streamspace.sessions import states

KEEPALIVE_SECONDS = 5.0
POLL_SECONDS = 2.0  # events also come from other processes: re-read at least this often


async def stream(api, request, session_id):
    principal = await api.principal(request)
    if not is_uuid(session_id):
        raise not_found("no such session")
    owner = None if principal.is_admin else principal.user_id
    session = await session_rows.get(api.ctx.db, session_id.lower(), owner_id=owner)
    if session is None:
        raise not_found("no such session")
    request.setHeader(b"Content-Type", b"text/event-stream")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Accel-Buffering", b"no")
    request.write(b": streamspace session events\n\n")
    await _EventStream(api.ctx, request, str(session["id"]),
                       api.ctx.extras.get("lifecycle")).run()
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
                self.wake.addTimeout(POLL_SECONDS, self.ctx.reactor,
                                     onTimeoutCancel=lambda *_: None)
                await self.wake
        finally:
            keepalive.stop()
            if self.lifecycle is not None and self._notify in self.lifecycle.listeners:
                self.lifecycle.listeners.remove(self._notify)

    async def _flush(self) -> bool:
        """Send new events; True when the stream reached a settled state and is done.

        The state is read first: a move and its event commit together, so the events
        read next include the one that settled it."""
        session = await session_rows.get(self.ctx.db, self.session_id)
        for event in await session_rows.events(self.ctx.db, self.session_id, self.last_id):
            self.last_id = event["id"]
            self._send(event)
        if session is None:
            self._send({"id": self.last_id, "state": "terminated", "message": "deleted",
                        "created_at": datetime.now(UTC)})
            return True
        return session["state"] in states.SETTLED_STATES

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
