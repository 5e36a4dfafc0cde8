"""The Docker platform driver: each session is a labelled container on a Docker engine.

Start: the image (pulled if the policy says so, with progress), a home volume (one per
user and template for persistent homes, else one per session), the container (spec.py),
started, and ready once its VNC port speaks RFB. Hibernate stops it (renamed
`...-hibernated`, so a restarted agent tells it from one that died) or, for templates with
`hibernate: pause`, freezes it (`docker pause`: programs keep their memory); wake starts or
unfreezes it. Stop removes the container and the session's volume, and a persistent home
only with purge (or DOCKER_PURGE_HOMES=always).

Containers outlive the agent (`outlives_agent`): `start()` finds this agent's containers
again by label and reconciles; the engine's `/events` stream keeps the table current and
reports containers that die (exit code, OOM, last output) as `session_status`.
"""

from __future__ import annotations

from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger

from agent.backoff import capped_backoff
from agent.platforms import xvnc
from agent.platforms.base import (
    HIBERNATED,
    RUNNING,
    STARTING,
    Capacity,
    DriverError,
    PlatformDriver,
    SessionInfo,
    SessionTemplate,
    Usage,
    UserRef,
    VncEndpoint,
    check_capacity,
)
from agent.platforms.docker import spec as S
from agent.platforms.docker.containers import (
    allocate_host_port,
    exit_reason,
    host_slot_free,
    isolation_warning,
    vnc_endpoint,
)
from agent.platforms.docker.engine import EngineClient, EngineError
from agent.platforms.docker.events import EventWatcher
from agent.platforms.docker.images import ensure_image
from agent.platforms.docker.ops import ContainerOps, DockerSession
from agent.platforms.local_store import check_session_id

log = Logger()

_SHOWN = {"starting": STARTING, "running": RUNNING, "hibernated": HIBERNATED}


class DockerDriver(PlatformDriver):
    name = "docker"
    outlives_agent = True

    def __init__(self, reactor, client: EngineClient, capacity: Capacity, *, agent_id: str,
                 placement: S.Placement | None = None, pull_policy: str = "missing",
                 purge_homes: bool = False, ready_timeout: float = 30.0,
                 stop_grace: int = 5) -> None:
        super().__init__(capacity)
        self.reactor, self.client, self.agent_id = reactor, client, agent_id
        self.placement = placement or S.Placement()
        self.pull_policy, self.purge_homes = pull_policy, purge_homes
        self.ready_timeout = ready_timeout
        self.ops = ContainerOps(client, agent_id, stop_grace)
        self._sessions = self.ops.sessions
        self._held_events: list[dict] | None = None  # events that arrive during discovery
        self.events = EventWatcher(reactor, client, self.ops.filters(), self._on_event,
                                   on_reconnect=self._resync)

    # -- discovery and shutdown ----------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._discover())

    async def _discover(self) -> None:
        """Retry until the engine answers; then find this agent's containers again."""
        version = await self._retrying("reach the Docker engine", self.client.negotiate)
        await self._warn_about_isolation()
        self._held_events = []  # from here on, events wait until the listing is done
        await self.events.start()  # reopens itself until it is open
        await self._retrying("list this agent's containers", self._reconcile)
        held, self._held_events = self._held_events, None
        for event in held:
            self._on_event(event)
        log.info("Docker engine {version} (API {api}) at {where}: {n} session container(s) "
                 "of this agent", version=self.client.engine_version,
                 api=f"{version[0]}.{version[1]}", where=self.client.address.describe(),
                 n=len(self._sessions))

    async def _warn_about_isolation(self) -> None:
        network = None
        if not self.placement.host_network:
            try:
                network = await self.client.call(
                    "GET", f"/networks/{quote(self.placement.network)}")
            except EngineError as e:
                if e.status != 404:
                    log.warn("could not inspect the Docker network {network}: {e}",
                             network=self.placement.network, e=e.message)
                    return
        warning = isolation_warning(self.placement, network)
        if warning:
            log.warn("{warning}", warning=warning)

    async def _retrying(self, what: str, step):
        delay = capped_backoff(initial=0.5, cap=10.0)
        attempt = 0
        while True:
            try:
                return await step()
            except (EngineError, DriverError) as e:
                attempt += 1
                log.warn("could not {what} yet ({problem}); retrying", what=what,
                         problem=str(e))
                await deferLater(self.reactor, delay(attempt), lambda: None)

    async def _reconcile(self) -> None:
        """What each container of this agent says about its session."""
        found = await self.client.call("GET", "/containers/json",
                                       {"all": 1, "filters": self.ops.filters()})
        for item in found or []:
            labels = item.get("Labels") or {}
            sid = labels.get(S.SESSION)
            if not sid or sid in self._sessions:
                continue
            sess = DockerSession(sid, dict(labels), container_id=item["Id"])
            hibernated = f"/{S.hibernated_name(sid)}" in (item.get("Names") or [])
            state = item.get("State")
            self._sessions[sid] = sess
            if state == "paused" or (state == "exited" and hibernated):
                sess.state = HIBERNATED
            elif state == "running" and hibernated:  # the agent died while hibernating it
                await self.ops.stop(sess)
                sess.state = HIBERNATED
            elif state == "running":
                sess.state = RUNNING
                try:
                    sess.endpoint = vnc_endpoint(await self.ops.inspect(sess), self.placement)
                except DriverError as e:  # e.g. DOCKER_NETWORK changed since it started
                    log.warn("session {session_id}: {e}", session_id=sid, e=str(e))
            elif state == "created":  # a start the agent did not finish
                await self.ops.remove(sess, keep_volume=sess.persistent)
            elif state in ("exited", "dead"):  # it ended while the agent was away
                await self._ended(sess)
            else:  # restarting, removing: the next event tells
                del self._sessions[sid]

    async def _resync(self) -> None:
        """The events stream was reopened: look at what it may have missed."""
        for sess in [s for s in self._sessions.values() if s.state == RUNNING]:
            try:
                running = (await self.ops.inspect(sess))["State"].get("Running")
            except EngineError as e:
                if e.status != 404:
                    raise
                running = False
            if not running and sess.state == RUNNING:
                await self._ended(sess)

    def shutdown(self) -> defer.Deferred[list[str]]:
        """Containers keep running without the agent; the next `start()` finds them."""
        async def close() -> list[str]:
            await self.events.stop()
            await self.client.close()
            return []

        return defer.ensureDeferred(close())

    # -- queries -------------------------------------------------------------------------

    def list_sessions(self) -> list[SessionInfo]:
        return [SessionInfo(s.session_id, _SHOWN[s.state]) for s in self._sessions.values()
                if s.state in _SHOWN]

    def vnc_address(self, session_id: str) -> VncEndpoint | None:
        sess = self._sessions.get(session_id)
        return sess.endpoint if sess is not None and sess.state == RUNNING else None

    def vnc_endpoint(self, session_id: str) -> defer.Deferred:
        endpoint = self.vnc_address(session_id)
        if endpoint is None:
            return defer.fail(DriverError("the session is not running on this agent"))
        return defer.succeed(endpoint.client_endpoint(self.reactor))

    def usage(self) -> Usage:
        """Starting and running sessions; a paused one still holds its memory."""
        active = [s for s in self._sessions.values() if s.state in ("starting", "running")]
        paused = [s for s in self._sessions.values()
                  if s.state == HIBERNATED and s.paused_mode]
        return Usage(sessions=len(active), cpu=sum(s.cpu for s in active),
                     memory_gb=sum(s.memory_mb for s in active + paused) / 1024)

    def container_id(self, session_id: str) -> str | None:
        sess = self._sessions.get(session_id)
        return sess.container_id if sess is not None else None

    # -- commands ------------------------------------------------------------------------

    # Deadlines are enforced by the executor, which cancels the Deferred: the commands'
    # `except BaseException` branches then undo what they began.

    def start_session(self, session_id: str, template: SessionTemplate, user: UserRef,
                      name: str, deadline: float | None = None) -> defer.Deferred[None]:
        return _sentences("start the session", self._start(session_id, template, user, name))

    def stop_session(self, session_id: str, deadline: float | None = None,
                     purge: bool = False) -> defer.Deferred[None]:
        return _sentences("stop the session", self._stop(session_id, purge))

    def hibernate_session(self, session_id: str, deadline: float | None = None
                          ) -> defer.Deferred[None]:
        return _sentences("hibernate the session", self._hibernate(session_id))

    def wake_session(self, session_id: str, template: SessionTemplate, user: UserRef | None,
                     deadline: float | None = None) -> defer.Deferred[None]:
        return _sentences("wake the session", self._wake(session_id, template))

    async def _start(self, session_id: str, template: SessionTemplate, user: UserRef,
                     name: str) -> None:
        check_session_id(session_id)
        current = self._sessions.get(session_id)
        if current is not None:
            if current.state == RUNNING:
                return
            raise DriverError(f"the session is {current.state} on this agent; it cannot be "
                              "started again")
        spec = S.SessionSpec.from_template(template)
        check_capacity(self.capacity, self.usage(), template)
        sess = await self._create(session_id, template, user, name, spec)
        try:
            await self._run(sess)
        except BaseException:
            await self.ops.remove(sess, keep_volume=sess.persistent)
            raise
        log.info("session {session_id} running in container {container} ({endpoint})",
                 session_id=session_id, container=(sess.container_id or "")[:12],
                 endpoint=f"{sess.endpoint.host}:{sess.endpoint.port}")

    async def _create(self, session_id: str, template: SessionTemplate, user: UserRef,
                      name: str, spec: S.SessionSpec, keep_volume: bool = False
                      ) -> DockerSession:
        """Image, volume and container; on any failure nothing of the session is left
        (but its home volume when persistent or `keep_volume`)."""
        if self.placement.host_network:
            port = allocate_host_port({s.vnc_port for s in self._sessions.values()})
        else:
            port = spec.vnc_port
        volume = S.home_volume(template, user, session_id)
        labels = S.labels(session_id=session_id, template=template, user=user,
                          agent_id=self.agent_id, name=name, spec=spec, vnc_port=port,
                          volume=volume)
        sess = DockerSession(session_id, labels)
        self._sessions[session_id] = sess
        try:
            await ensure_image(self.client, spec.image, self.pull_policy,
                               lambda message: self.report_progress(session_id, message))
            await self.ops.call("POST", "/volumes/create", body=S.volume_body(
                volume, session_id=session_id, template=template, user=user,
                agent_id=self.agent_id))
            await self.ops.create(sess, S.container_body(
                spec=spec, placement=self.placement, template=template, user=user, name=name,
                vnc_port=port, container_labels=labels, volume=volume))
        except BaseException:
            await self.ops.remove(sess, keep_volume=keep_volume or template.persistent_home)
            raise
        self.report_progress(session_id, "container created")
        return sess

    async def _run(self, sess: DockerSession) -> None:
        """Start the container and wait until its VNC server speaks RFB."""
        sess.expected_exit = False
        await self.ops.call("POST", f"/containers/{sess.ref}/start")
        self.report_progress(sess.session_id, "container started; waiting for its VNC server")
        info = await self.ops.inspect(sess)
        if not info["State"].get("Running"):
            raise await self._failure_at_start(sess, info)
        sess.endpoint = vnc_endpoint(info, self.placement)
        try:
            await self._speaks_rfb(sess, gave_up=lambda: sess.exited or sess.aborted)
        except xvnc.RfbNotReady as e:
            if sess.aborted:
                raise DriverError("the session was stopped while it was starting") from e
            info = await self.ops.inspect(sess)
            if not info["State"].get("Running"):
                raise await self._failure_at_start(sess, info) from e
            raise DriverError(f"the session's container runs but its VNC server did not "
                              f"answer: {e}") from e
        sess.state = RUNNING

    async def _speaks_rfb(self, sess: DockerSession, gave_up) -> None:
        """Poll the session's VNC endpoint until it sends an RFB banner (xvnc.RfbNotReady
        when it does not within the ready timeout, or `gave_up()`)."""
        assert sess.endpoint is not None
        endpoint = sess.endpoint
        await xvnc.wait_for_rfb(self.reactor, lambda: endpoint.client_endpoint(self.reactor),
                                self.ready_timeout, gave_up=gave_up)

    async def _failure_at_start(self, sess: DockerSession, info: dict) -> DriverError:
        _, reason = exit_reason(info.get("State") or {}, await self.ops.logs(sess),
                                sess.memory_mb, oom_event=sess.oom, at_start=True)
        return DriverError(reason)

    async def _stop(self, session_id: str, purge: bool) -> None:
        check_session_id(session_id)
        sess = self._sessions.get(session_id) or await self.ops.find(session_id)
        if sess is None:  # gone already; a per-session volume may remain
            await self.ops.call("DELETE", f"/volumes/streamspace-session-{session_id}",
                                missing_ok=True)
            return
        sess.aborted = True
        keep = sess.persistent and not (purge or self.purge_homes)
        await self.ops.remove(sess, keep_volume=keep, graceful=True)
        log.info("session {session_id} stopped{purged}", session_id=session_id,
                 purged="" if keep or not sess.persistent else ", its home deleted")

    async def _hibernate(self, session_id: str) -> None:
        check_session_id(session_id)
        sess = self._sessions.get(session_id)
        if sess is not None and sess.state == HIBERNATED:
            return
        if sess is None or sess.state != RUNNING:
            raise DriverError("the session is not running on this agent")
        if sess.paused_mode:
            await self.ops.call("POST", f"/containers/{sess.ref}/pause")
        else:
            sess.expected_exit = True
            await self.ops.rename(sess, S.hibernated_name(session_id))
            await self.ops.stop(sess)
        sess.state, sess.endpoint = HIBERNATED, None
        log.info("session {session_id} hibernated ({how})", session_id=session_id,
                 how="paused" if sess.paused_mode else "stopped")

    async def _wake(self, session_id: str, template: SessionTemplate) -> None:
        check_session_id(session_id)
        sess = self._sessions.get(session_id)
        if sess is not None and sess.state == RUNNING:
            return
        if sess is None or sess.state != HIBERNATED:
            raise DriverError("cannot wake this session: its container is not on this "
                              "agent's Docker engine (it may have been removed)")
        sess.state, sess.exited, sess.oom, sess.aborted = "starting", False, False, False
        try:
            if sess.paused_mode:
                await self.ops.call("POST", f"/containers/{sess.ref}/unpause")
                sess.endpoint = vnc_endpoint(await self.ops.inspect(sess), self.placement)
                await self._speaks_rfb(sess, gave_up=lambda: sess.exited)
                sess.state = RUNNING
            else:
                if self.placement.host_network and not host_slot_free(sess.vnc_port):
                    sess = await self._recreate(sess, template)
                else:
                    await self.ops.rename(sess, S.container_name(session_id))
                await self._run(sess)
        except BaseException as e:
            await self._back_to_sleep(sess)
            if isinstance(e, xvnc.RfbNotReady):
                raise DriverError(f"the session's VNC server did not answer after the "
                                  f"wake: {e}") from e
            raise
        log.info("session {session_id} woken", session_id=session_id)

    async def _recreate(self, sess: DockerSession, template: SessionTemplate
                        ) -> DockerSession:
        """Host networking: the session's port was taken while it slept, so a new
        container (on the same home volume) with a new port."""
        log.info("session {session_id}: VNC port {port} is taken; recreating its container",
                 session_id=sess.session_id, port=sess.vnc_port)
        await self.ops.remove(sess, keep_volume=True)
        user = UserRef(sess.labels.get(S.USER, "unknown"), sess.labels.get(S.USERNAME, ""))
        return await self._create(sess.session_id, template, user,
                                  sess.labels.get(S.NAME, ""),
                                  S.SessionSpec.from_template(template), keep_volume=True)

    async def _back_to_sleep(self, sess: DockerSession) -> None:
        """A wake failed: leave the session hibernated, as it was, for another try."""
        if self._sessions.get(sess.session_id) is not sess or sess.container_id is None:
            return
        try:
            if sess.paused_mode:
                await self.ops.call("POST", f"/containers/{sess.ref}/pause", conflict_ok=True)
            else:
                await self.ops.stop(sess, grace=0)
                await self.ops.rename(sess, S.hibernated_name(sess.session_id))
        except DriverError as e:
            log.warn("session {session_id}: could not put it back to hibernation: {e}",
                     session_id=sess.session_id, e=str(e))
        sess.state, sess.endpoint = HIBERNATED, None

    # -- containers ending on their own --------------------------------------------------

    def _on_event(self, event: dict) -> None:
        if self._held_events is not None:
            self._held_events.append(event)
            return
        actor = event.get("Actor") or {}
        sess = self._sessions.get((actor.get("Attributes") or {}).get(S.SESSION, ""))
        if sess is None or sess.container_id is None or actor.get("ID") != sess.container_id:
            return  # not ours, or an earlier container of the session (a recreated one)
        action = str(event.get("Action") or "")
        if action == "oom":
            sess.oom = True
        elif action in ("die", "destroy"):
            sess.exited = True
            if sess.state == RUNNING and not sess.expected_exit:
                defer.ensureDeferred(self._ended(sess)).addErrback(
                    lambda f: log.failure("reporting the end of session {session_id}", f,
                                          session_id=sess.session_id))
            elif action == "destroy" and sess.state == HIBERNATED:  # removed behind our back
                del self._sessions[sess.session_id]
                self.report_status(sess.session_id, "failed", "the hibernated session's "
                                   "container was removed from the Docker engine")

    async def _ended(self, sess: DockerSession) -> None:
        """It ended on its own: tell the control plane why, and clear it away."""
        sess.state = "stopping"
        try:
            info = await self.ops.inspect(sess)
            state, reason = exit_reason(info.get("State") or {}, await self.ops.logs(sess),
                                        sess.memory_mb, oom_event=sess.oom)
        except EngineError as e:
            state, reason = "failed", f"the session's container is gone ({e.message})"
        log.warn("session {session_id} ended on its own: {reason}",
                 session_id=sess.session_id, reason=reason)
        self.report_status(sess.session_id, state, reason)
        await self.ops.remove(sess, keep_volume=sess.persistent)


def _sentences(what: str, coro) -> defer.Deferred:
    """Run a command; an engine failure that no step turned into a sentence becomes one."""
    async def run():
        try:
            return await coro
        except EngineError as e:
            raise DriverError(f"the agent could not {what}: {e.message}") from e

    return defer.ensureDeferred(run())
