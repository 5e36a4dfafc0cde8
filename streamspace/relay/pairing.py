"""One tunnel's pairing: a leg that waits (the viewer's) and a leg that must arrive with
the tunnel's one-time secret (the agent's), as an explicit state machine.

    idle --start--> waiting --tunnel_arrived--> linked --viewer_left/tunnel_left/end--> ended
                       |--agent_refused / timed_out / viewer_left / end--> ended

Every input is accepted in every state (late or duplicate events change nothing), so
the order in which sockets close, answers arrive and timers fire cannot leave a tunnel
half-open. Like magic-wormhole's transit relay (its TransitServerState), the machine
knows nothing of where the legs come from: the waiting leg's side asks for its partner
through `request`, and what the relay does with a live link is the Link's business. So the
same machine pairs a viewer with a tunnel leg spliced in from another replica.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from automat import MethodicalMachine
from twisted.internet import defer
from twisted.logger import Logger

from streamspace.relay.access import CLOSE_TIMEOUT, CLOSE_UNAVAILABLE
from streamspace.relay.link import Link

log = Logger()

CLOSE_NORMAL = 1000


class TunnelPairing:
    _machine = MethodicalMachine()

    def __init__(self, tunnel_id: str, secret_hash: str, viewer, grant: Any, clock,
                 arrival_timeout: float, request: Callable[[TunnelPairing], defer.Deferred],
                 make_link: Callable[[Any, Any], Link],
                 on_end: Callable[[TunnelPairing], None]) -> None:
        self.tunnel_id = tunnel_id
        self.secret_hash = secret_hash
        self.viewer = viewer
        self.tunnel = None
        self.grant = grant
        self.clock = clock
        self.arrival_timeout = arrival_timeout
        self._request = request
        self._make_link = make_link
        self._on_end = on_end
        self.link: Link | None = None
        self.reply: defer.Deferred | None = None
        self._timer = None
        self.outcome = ""  # how it went: linked, timeout, agent_failed, abandoned, ended
        self.close_reason = ""
        viewer.owner = self

    # -- what the legs tell us (they only know `owner.leg_opened/leg_gone`) -------------

    def leg_opened(self, leg) -> None:
        self.tunnel_arrived(leg)

    def leg_gone(self, leg, reason: str) -> None:
        if leg is self.viewer:
            self.viewer_left(reason)
        elif leg is self.tunnel:
            self.tunnel_left(reason)

    # -- states ------------------------------------------------------------------------

    @_machine.state(initial=True)
    def idle(self):
        """The viewer's leg is open and admitted; the agent was not asked yet."""

    @_machine.state()
    def waiting(self):
        """The agent was asked for the tunnel leg; the viewer is not read."""

    @_machine.state()
    def linked(self):
        """Bytes flow both ways."""

    @_machine.state()
    def ended(self):
        """Both legs are closed or closing; nothing more happens."""

    # -- inputs ------------------------------------------------------------------------

    @_machine.input()
    def start(self):
        """Ask for the tunnel leg."""

    @_machine.input()
    def tunnel_arrived(self, leg):
        """The agent's leg opened with the right secret."""

    @_machine.input()
    def agent_refused(self, reason: str):
        """The agent answered `failed` (or could not be asked)."""

    @_machine.input()
    def timed_out(self):
        """The tunnel leg did not arrive in time."""

    @_machine.input()
    def viewer_left(self, reason: str):
        """The viewer's leg closed."""

    @_machine.input()
    def tunnel_left(self, reason: str):
        """The tunnel leg closed."""

    @_machine.input()
    def end(self, code: int, reason: str):
        """End it from outside (access revoked, session deleted, idle, shutdown)."""

    # -- outputs -----------------------------------------------------------------------

    @_machine.output()
    def _ask_agent(self):
        self._timer = self.clock.callLater(self.arrival_timeout, self.timed_out)
        self.reply = self._request(self)
        self.reply.addCallbacks(self._answered, self._not_answered)

    def _answered(self, answer) -> None:
        ok, _result, reason = answer
        if not ok:
            self.agent_refused(reason or "vnc_connect failed")

    def _not_answered(self, failure) -> None:
        if not failure.check(defer.CancelledError):
            self.agent_refused(failure.getErrorMessage() or "the agent did not answer")

    @_machine.output()
    def _stop_timer(self):
        self._cancel_timer()

    @_machine.output()
    def _link(self, leg):
        self.tunnel = leg
        leg.owner = self
        self.outcome = "linked"
        self.link = self._make_link(self.viewer, leg)
        self.link.start()

    @_machine.output()
    def _refuse_unavailable(self, reason: str):
        self._close_viewer(CLOSE_UNAVAILABLE, f"the agent could not connect: {reason}",
                           "agent_failed")

    @_machine.output()
    def _refuse_timeout(self):
        self._close_viewer(CLOSE_TIMEOUT, "the session's agent did not open the tunnel in "
                                          f"{self.arrival_timeout:.0f}s", "timeout")

    @_machine.output()
    def _viewer_gone(self, reason: str):
        self.close_reason = reason
        self.outcome = self.outcome or "abandoned"
        if self.tunnel is not None:
            self.tunnel.close_leg(CLOSE_NORMAL, "the viewer left")

    @_machine.output()
    def _tunnel_gone(self, reason: str):
        self._close_viewer(CLOSE_NORMAL, reason, "")

    @_machine.output()
    def _close_both(self, code: int, reason: str):
        self._close_viewer(code, reason, "ended")
        if self.tunnel is not None:
            self.tunnel.close_leg(CLOSE_NORMAL, reason)

    @_machine.output()
    def _unlink(self):
        if self.link is not None:
            self.link.stop()

    @_machine.output()
    def _finish(self):
        self._cancel_timer()
        if self.reply is not None and not self.reply.called:
            self.reply.cancel()
        self._on_end(self)

    @_machine.output()
    def _drop_late_tunnel(self, leg):
        leg.owner = None
        leg.close_leg(CLOSE_NORMAL, "the tunnel is no longer wanted")

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _close_viewer(self, code: int, reason: str, outcome: str) -> None:
        self.close_reason = self.close_reason or reason
        self.outcome = self.outcome or outcome
        self.viewer.close_leg(code, reason)

    # -- transitions -------------------------------------------------------------------

    idle.upon(start, enter=waiting, outputs=[_ask_agent])
    idle.upon(viewer_left, enter=ended, outputs=[_viewer_gone, _finish])
    idle.upon(end, enter=ended, outputs=[_close_both, _finish])
    idle.upon(tunnel_arrived, enter=idle, outputs=[_drop_late_tunnel])
    for _ignored in (agent_refused, timed_out, tunnel_left):
        idle.upon(_ignored, enter=idle, outputs=[])

    waiting.upon(tunnel_arrived, enter=linked, outputs=[_stop_timer, _link])
    waiting.upon(agent_refused, enter=ended, outputs=[_refuse_unavailable, _finish])
    waiting.upon(timed_out, enter=ended, outputs=[_refuse_timeout, _finish])
    waiting.upon(viewer_left, enter=ended, outputs=[_viewer_gone, _finish])
    waiting.upon(end, enter=ended, outputs=[_close_both, _finish])
    for _ignored in (start, tunnel_left):
        waiting.upon(_ignored, enter=waiting, outputs=[])

    linked.upon(viewer_left, enter=ended, outputs=[_unlink, _viewer_gone, _finish])
    linked.upon(tunnel_left, enter=ended, outputs=[_unlink, _tunnel_gone, _finish])
    linked.upon(end, enter=ended, outputs=[_unlink, _close_both, _finish])
    linked.upon(tunnel_arrived, enter=linked, outputs=[_drop_late_tunnel])
    for _ignored in (start, agent_refused, timed_out):
        linked.upon(_ignored, enter=linked, outputs=[])

    ended.upon(tunnel_arrived, enter=ended, outputs=[_drop_late_tunnel])
    for _ignored in (start, agent_refused, timed_out, viewer_left, tunnel_left, end):
        ended.upon(_ignored, enter=ended, outputs=[])
    del _ignored
