"""Issue 9 item 10 over real WebSockets: 500 viewers connecting and disconnecting on one
session through the agent's control channel and real tunnels, with lifecycle commands of
that session interleaved. Every command is answered once, lifecycle commands run in
order, viewers get real tunnels, and no tunnel is left open. (The same burst behind a
slow start, where the old per-session lock recursed, is in tests/unit/agent/
test_executor.py.)"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from agent.platforms.base import VncEndpoint
from tests.support.fake_driver import FakeDriver
from tests.support.polling import until
from tests.support.tcp_peers import PeerServer

pytestmark = pytest.mark.slow

SID = "burst-session"
TEMPLATE = {"name": "xterm", "cpu": 1, "memory_mb": 512,
            "platforms": {"local": {"command": "xterm"}}}
VIEWERS = 500
HALF = VIEWERS // 2


@pytest_twisted.ensureDeferred
async def test_a_burst_of_viewers_and_lifecycle_commands_on_one_session(control_plane,
                                                                        agents):
    vnc = reactor.listenTCP(0, PeerServer(greeting=b"RFB 003.008\n"), interface="127.0.0.1")
    try:
        # the driver stands in for a platform; the VNC server is a real TCP peer
        driver = FakeDriver(endpoint=VncEndpoint("127.0.0.1", vnc.getHost().port))
        driver.add_running(SID)
        agent = agents.start(driver)
        await control_plane.wait_connected()
        sent: dict[str, str] = {}  # command id -> type
        lifecycle = []

        def send(kind: str, data: dict) -> None:
            sent[control_plane.command(kind, SID, data)] = kind

        def connect(i: int) -> None:
            tunnel_id, secret = control_plane.allow_tunnel(f"t{i}")
            send("vnc_connect", {"tunnel_id": tunnel_id, "secret": secret})
            if i % 50 == 25:  # a hibernate and a wake, queued one after the other
                for kind in ("hibernate_session", "wake_session"):
                    lifecycle.append((kind, SID))
                    send(kind, {"template": TEMPLATE})

        def answered() -> bool:
            return all(control_plane.about(cid, "complete") or
                       control_plane.about(cid, "failed") for cid in sent)

        for i in range(HALF):  # half the viewers arrive at once...
            connect(i)
        await until(answered, 60, what="the first viewers answered")
        # lifecycle commands do not queue behind viewers: the last wake of this wave is
        # answered before the viewers that came before it all have their tunnels
        ids = list(sent)
        last_wake = max(i for i, cid in enumerate(ids) if sent[cid] == "wake_session")
        answer_at = {f["payload"]["command_id"]: n for n, f in enumerate(control_plane.frames)
                     if f["type"] in ("complete", "failed")}
        assert answer_at[ids[last_wake]] < max(
            answer_at[cid] for cid in ids[:last_wake] if sent[cid] == "vnc_connect")
        for i in range(HALF, VIEWERS):  # ...then the rest, while the first half leave
            connect(i)
            send("vnc_disconnect", {"tunnel_id": f"t{i - HALF}"})
        await until(answered, 60, what="the second wave answered")
        for i in range(HALF, VIEWERS):
            send("vnc_disconnect", {"tunnel_id": f"t{i}"})
        await until(answered, 60, what="every command answered")

        completed = {kind: 0 for kind in sent.values()}
        for cid, kind in sent.items():
            outcomes = control_plane.about(cid, "complete") + control_plane.about(cid, "failed")
            assert len(outcomes) == 1, outcomes
            if outcomes[0]["type"] == "complete":
                completed[kind] += 1
            else:  # a viewer that came while the session was hibernated
                reason = outcomes[0]["payload"]["reason"]
                assert (kind, reason) == ("vnc_connect",
                                          "the session is not running on this agent")
        assert driver.calls == lifecycle  # in arrival order, every one completed
        assert completed["hibernate_session"] == completed["wake_session"] == VIEWERS // 50
        assert completed["vnc_connect"] >= VIEWERS * 0.9  # viewers got real tunnels
        assert completed["vnc_disconnect"] == VIEWERS
        await until(lambda: not agent.tunnels.tunnels, 30, what="every tunnel closed")
        assert control_plane.errors == [] and control_plane.connections == 1
    finally:
        await vnc.stopListening()
