"""The Kubernetes platform driver: each session is a Deployment + Service (+ home PVC).

Everything the driver answers comes from four list+watch caches (reflector.py) of the
agent's objects, selected by label: Deployments, Pods, Services, and the namespace's
Events. Commands change objects through the API and then wait on those caches: a start
is done when the session's pod is ready *and* its VNC server answers RFB through the very
endpoint viewers will use; it fails, within moments, with the cluster's own reason (image
pull, unschedulable, crash loop, quota/admission) and leaves nothing but the home behind.

Shutdown policy (`outlives_agent` True): pods keep running while the agent is away; the
next `start()` finds them by label before the agent registers, and the control plane
reconciles (it stops the sessions it does not know). Objects no Deployment explains (a
Service left by an interrupted start) are removed after `orphan_grace` with a log line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger

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
    check_capacity,
)
from agent.platforms.kubernetes import objects as k8s
from agent.platforms.kubernetes import podstatus
from agent.platforms.kubernetes.client import ApiError, KubeClient, path_for
from agent.platforms.kubernetes.cluster import ClusterAccess
from agent.platforms.kubernetes.portforward import PortForwardEndpoint
from agent.platforms.kubernetes.reflector import Reflector
from agent.platforms.kubernetes.spec import SessionSpec, session_spec
from agent.platforms.xvnc import RFB_BANNER_PREFIX, read_rfb_banner

log = Logger()

SERVICE, PORT_FORWARD = "service", "port-forward"
EVENTS_PER_POD = 30


def _describe(e: ApiError, what: str) -> DriverError:
    if e.code in (403, 422):
        return DriverError(f"the cluster refused the session's {what}: {e.message}")
    if e.code == 401:
        return DriverError(f"the cluster refused the agent's credentials (401): {e.message}")
    return DriverError(f"the Kubernetes API failed on the session's {what}: {e.message}")


class KubernetesDriver(PlatformDriver):
    name = "kubernetes"
    outlives_agent = True

    def __init__(self, reactor, client: KubeClient, access: ClusterAccess,
                 capacity: Capacity, *, namespace: str, agent_id: str,
                 vnc_mode: str = PORT_FORWARD, storage_class: str = "",
                 home_size: str = "5Gi", orphan_grace: float = 300.0,
                 watch_timeout: int = 60, silence_grace: float = 15.0,
                 rfb_timeout: float = 15.0) -> None:
        super().__init__(capacity)
        self.reactor, self.client, self.access = reactor, client, access
        self.namespace, self.agent_id, self.vnc_mode = namespace, agent_id, vnc_mode
        self.storage_class, self.home_size = storage_class, home_size
        self.orphan_grace, self.rfb_timeout = orphan_grace, rfb_timeout
        selector = k8s.agent_selector(agent_id)

        def reflector(group: str, plural: str, kind: str, labelled: bool = True):
            return Reflector(reactor, client, path_for(group, plural, namespace), kind,
                             label_selector=selector if labelled else None,
                             on_change=lambda t, o: self._on_change(kind, t, o),
                             timeout_seconds=watch_timeout,
                             silence_grace=silence_grace)

        self.deployments = reflector("apps/v1", "deployments", "Deployment")
        self.pods = reflector("v1", "pods", "Pod")
        self.services = reflector("v1", "services", "Service")
        self.events = reflector("v1", "events", "Event", labelled=False)
        self.reflectors = [self.deployments, self.pods, self.services, self.events]
        self._pod_events: dict[str, dict[str, dict[str, Any]]] = {}
        self._active: dict[str, str] = {}  # session -> command in progress
        self._reserving: dict[str, tuple[float, int]] = {}  # starts not yet in the cache
        self._progress_sent: dict[str, set[str]] = {}
        self._running_seen: set[str] = set()  # sessions we saw running (for died reports)
        self._waiters: dict[str, list[tuple[Callable[[], Any], defer.Deferred]]] = {}
        self._orphans_since: dict[str, float] = {}
        self._gc = task.LoopingCall(self._collect_orphans)
        self._gc.clock = reactor

    # -- lifecycle of the driver -----------------------------------------------------------

    def start(self) -> defer.Deferred:
        """List+watch everything of this agent; fire once every cache is filled."""
        for r in self.reflectors:
            r.start()
        return defer.ensureDeferred(self._discover())

    async def _discover(self) -> None:
        await defer.gatherResults([r.wait_synced() for r in self.reflectors])
        for info in self.list_sessions():
            if info.state == RUNNING:
                self._running_seen.add(info.session_id)
        log.info("found {count} session(s) of agent {agent_id} in namespace {namespace}",
                 count=len(self.list_sessions()), agent_id=self.agent_id,
                 namespace=self.namespace)
        self._gc.start(max(1.0, min(self.orphan_grace / 4, 30.0)), now=False)

    def shutdown(self) -> defer.Deferred[list[str]]:
        """Sessions outlive the agent: stop watching, stop nothing."""
        if self._gc.running:
            self._gc.stop()
        for r in self.reflectors:
            r.stop()
        d = self.client.close()
        d.addTimeout(2.0, self.reactor)  # an API server that does not answer the close
        d.addErrback(lambda f: log.warn("closing the API connections: {err}",
                                        err=f.getErrorMessage()))
        d.addCallback(lambda _: [])
        return d

    # -- the caches ------------------------------------------------------------------------

    def _deployment(self, session_id: str) -> dict[str, Any] | None:
        for obj in self.deployments.values():
            if k8s.session_of(obj) == session_id:
                return obj
        return None

    def _service(self, session_id: str) -> dict[str, Any] | None:
        for obj in self.services.values():
            if k8s.session_of(obj) == session_id:
                return obj
        return None

    def _pods(self, session_id: str) -> list[dict[str, Any]]:
        return [p for p in self.pods.values() if k8s.session_of(p) == session_id]

    def _events_of(self, pod: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self._pod_events.get(k8s.name_of(pod), {}).values())

    def _on_change(self, kind: str, change: str, obj: dict[str, Any]) -> None:
        if kind == "Event":
            subject_kind, pod_name = podstatus.event_subject(obj)
            if subject_kind != "Pod":
                return
            events = self._pod_events.setdefault(pod_name, {})
            if change == "DELETED":
                events.pop(k8s.name_of(obj), None)
            else:
                events[k8s.name_of(obj)] = obj
                while len(events) > EVENTS_PER_POD:
                    events.pop(next(iter(events)))
            for pod in self.pods.values():
                if k8s.name_of(pod) == pod_name and k8s.session_of(pod):
                    self._changed(k8s.session_of(pod))
            return
        if kind == "Pod" and change == "DELETED":
            self._pod_events.pop(k8s.name_of(obj), None)
        session_id = k8s.session_of(obj)
        if session_id:
            self._changed(session_id)

    def _changed(self, session_id: str) -> None:
        for check, d in list(self._waiters.get(session_id, [])):
            try:
                result = check()
            except Exception as e:
                self._drop_waiter(session_id, d)
                d.errback(e)
                continue
            if result is not None:
                self._drop_waiter(session_id, d)
                d.callback(result)
        if self._active.get(session_id) in ("starting", "waking"):
            self._send_progress(session_id)
        elif session_id not in self._active:
            self._watch_running(session_id)

    def _wait(self, session_id: str, check: Callable[[], Any]) -> defer.Deferred:
        """Fires with `check()`'s first non-None answer, re-evaluated on every change of
        the session's objects (or fails with what it raises); cancellable."""
        d: defer.Deferred = defer.Deferred(lambda d: self._drop_waiter(session_id, d))
        try:
            result = check()
        except Exception as e:
            return defer.fail(e)
        if result is not None:
            return defer.succeed(result)
        self._waiters.setdefault(session_id, []).append((check, d))
        return d

    def _drop_waiter(self, session_id: str, d: defer.Deferred) -> None:
        waiters = self._waiters.get(session_id, [])
        waiters[:] = [w for w in waiters if w[1] is not d]
        if not waiters:
            self._waiters.pop(session_id, None)

    # -- queries ---------------------------------------------------------------------------

    def _state(self, dep: dict[str, Any]) -> str:
        session_id = k8s.session_of(dep) or ""
        if k8s.replicas_of(dep) == 0 and self._active.get(session_id) != "waking":
            return HIBERNATED
        if any(podstatus.pod_ready(p) for p in self._pods(session_id)):
            return RUNNING
        return STARTING

    def list_sessions(self) -> list[SessionInfo]:
        """From the caches, plus starts whose Deployment the watch has not shown yet: a
        session is listed `starting` from the moment its start begins."""
        found = {}
        for dep in self.deployments.values():
            session_id = k8s.session_of(dep)
            if session_id and not podstatus.deleting(dep):
                found[session_id] = SessionInfo(session_id, self._state(dep))
        for session_id in self._reserving:
            found.setdefault(session_id, SessionInfo(session_id, STARTING))
        return sorted(found.values(), key=lambda s: s.session_id)

    def usage(self) -> Usage:
        """What running and starting sessions reserve, including starts whose Deployment
        the watch has not shown yet (two concurrent starts must not both fit)."""
        sessions, cpu, memory_mb = 0, 0.0, 0
        counted = set()
        for dep in self.deployments.values():
            if podstatus.deleting(dep) or self._state(dep) == HIBERNATED:
                continue
            counted.add(k8s.session_of(dep))
            c, m = k8s.reserved(dep)
            sessions, cpu, memory_mb = sessions + 1, cpu + c, memory_mb + m
        for session_id, (c, m) in self._reserving.items():
            if session_id not in counted:
                sessions, cpu, memory_mb = sessions + 1, cpu + c, memory_mb + m
        return Usage(sessions=sessions, cpu=cpu, memory_gb=memory_mb / 1024)

    def _ready_pod(self, session_id: str) -> dict[str, Any] | None:
        for pod in self._pods(session_id):
            if podstatus.pod_ready(pod):
                return pod
        return None

    def _endpoint(self, session_id: str):
        pod = self._ready_pod(session_id)
        if pod is None:
            return None
        if self.vnc_mode == SERVICE:
            svc = self._service(session_id)
            ip = ((svc or {}).get("spec") or {}).get("clusterIP")
            port = k8s.vnc_port_of(svc or {})
            if not ip or ip == "None" or not port:
                return None
            return HostnameEndpoint(self.reactor, ip, port, timeout=10)
        port = k8s.container_vnc_port(pod)
        if not port:
            return None
        return PortForwardEndpoint(self.reactor, self.access, self.namespace,
                                   k8s.name_of(pod), port)

    def vnc_endpoint(self, session_id: str) -> defer.Deferred:
        dep = self._deployment(session_id)
        endpoint = self._endpoint(session_id) if dep is not None else None
        if endpoint is None:
            return defer.fail(DriverError("the session is not running on this agent"))
        return defer.succeed(endpoint)

    # -- commands --------------------------------------------------------------------------

    def start_session(self, session_id: str, template: SessionTemplate, user: UserRef,
                      name: str, deadline: float | None = None) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start(session_id, template, user, name, False))

    def wake_session(self, session_id: str, template: SessionTemplate,
                     user: UserRef | None, deadline: float | None = None
                     ) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._wake(session_id, template, user))

    def stop_session(self, session_id: str, deadline: float | None = None,
                     purge: bool = False) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._stop(session_id, purge))

    def hibernate_session(self, session_id: str, deadline: float | None = None
                          ) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._hibernate(session_id))

    def _paths(self, spec_or_name: SessionSpec | str) -> tuple[str, str]:
        name = (spec_or_name.object_name if isinstance(spec_or_name, SessionSpec)
                else spec_or_name)
        return (path_for("apps/v1", "deployments", self.namespace, name),
                path_for("v1", "services", self.namespace, name))

    async def _start(self, session_id: str, template: SessionTemplate, user: UserRef,
                     name: str, waking: bool) -> None:
        spec = session_spec(session_id, template, user, name)
        current = self._deployment(session_id)
        if current is not None and not podstatus.deleting(current):
            if self._state(current) == RUNNING:
                return  # a redelivered start: it runs
        else:
            check_capacity(self.capacity, self.usage(), template)
        self._begin(session_id, "waking" if waking else "starting")
        self._reserving[session_id] = (spec.cpu, spec.memory_mb)
        try:
            if spec.persistent_home:
                await self._create_claim(spec)
            await self._ensure("Service", path_for("v1", "services", self.namespace),
                               k8s.service(spec, self.namespace, self.agent_id), session_id)
            dep = await self._ensure(
                "Deployment", path_for("apps/v1", "deployments", self.namespace),
                k8s.deployment(spec, self.namespace, self.agent_id), session_id)
            if k8s.replicas_of(dep) == 0:
                await self._scale(spec.object_name, 1)
            self.report_progress(session_id, f"created the session's Deployment and Service "
                                 f"{spec.object_name} in namespace {self.namespace}")
            await self._until_ready(session_id)
        except BaseException as e:
            self._end(session_id)
            await self._undo(session_id, spec.object_name, keep=waking)
            if isinstance(e, ApiError):
                raise _describe(e, "objects") from e
            raise
        self._end(session_id, running=True)
        log.info("session {session_id} running in {namespace}/{name}", session_id=session_id,
                 namespace=self.namespace, name=spec.object_name)

    def _begin(self, session_id: str, what: str) -> None:
        self._active[session_id] = what
        self._progress_sent[session_id] = set()
        self._orphans_since.pop(session_id, None)

    def _end(self, session_id: str, running: bool = False) -> None:
        self._active.pop(session_id, None)
        self._reserving.pop(session_id, None)
        self._progress_sent.pop(session_id, None)
        if running:
            self._running_seen.add(session_id)
        else:
            self._running_seen.discard(session_id)

    async def _undo(self, session_id: str, name: str, keep: bool) -> None:
        """A start that failed or was cancelled leaves nothing running; a wake that did
        goes back to hibernated (replicas 0) with everything kept."""
        try:
            if keep:
                await self._scale(name, 0)
            else:
                dep_path, svc_path = self._paths(name)
                await self._delete(dep_path, k8s.DELETE_IN_BACKGROUND)
                await self._delete(svc_path)
        except Exception as e:
            log.error("cleaning up session {session_id} after a failed start: {err}",
                      session_id=session_id, err=str(e))

    async def _create_claim(self, spec: SessionSpec) -> None:
        claim = k8s.home_claim(spec, self.namespace, self.agent_id, self.home_size,
                               self.storage_class)
        try:
            await self.client.create(
                path_for("v1", "persistentvolumeclaims", self.namespace), claim)
        except ApiError as e:
            if e.code != 409:
                raise _describe(e, "home volume claim") from e
            # AlreadyExists: the user's home from an earlier session, kept on purpose

    async def _ensure(self, kind: str, path: str, obj: dict[str, Any],
                      session_id: str) -> dict[str, Any]:
        """Create, or accept the same session's object that already exists."""
        try:
            return await self.client.create(path, obj)
        except ApiError as e:
            if e.code != 409:
                raise _describe(e, kind) from e
        name = k8s.name_of(obj)
        try:
            current = await self.client.get(f"{path}/{name}")
        except ApiError as e:
            raise _describe(e, kind) from e
        if k8s.session_of(current) != session_id:
            raise DriverError(f"a {kind} named {name} already exists in namespace "
                              f"{self.namespace} and is not this session's")
        if podstatus.deleting(current):
            raise DriverError(f"the session's {kind} {name} is still being deleted; try "
                              "again in a moment")
        return current

    async def _scale(self, name: str, replicas: int) -> None:
        try:
            await self.client.merge_patch(self._paths(name)[0], k8s.replicas_patch(replicas))
        except ApiError as e:
            if e.code == 404:
                raise DriverError("the session's Deployment is gone from the cluster") from e
            raise _describe(e, "Deployment") from e

    async def _delete(self, path: str, options: dict | None = None) -> None:
        try:
            await self.client.delete(path, options)
        except ApiError as e:
            if e.code != 404:
                raise _describe(e, "objects") from e

    async def _until_ready(self, session_id: str) -> None:
        """Wait on the caches until a pod is ready, failing with the cluster's reason;
        then check RFB through the endpoint viewers will use."""

        def check():
            dep = self._deployment(session_id)
            if dep is None:
                return None  # just created: the watch has not shown it yet
            failure = podstatus.deployment_failure(dep)
            if failure:
                raise DriverError(failure)
            for pod in self._pods(session_id):
                failure = podstatus.pod_failure(pod, self._events_of(pod))
                if failure:
                    raise DriverError(failure)
            return self._ready_pod(session_id)

        deadline: float | None = None
        problem = ""
        while True:
            await self._wait(session_id, check)  # ready (again), and not failing
            if deadline is None:
                deadline = self.reactor.seconds() + self.rfb_timeout
            endpoint = self._endpoint(session_id)
            if endpoint is not None:
                try:
                    banner = await read_rfb_banner(self.reactor, endpoint, timeout=5.0)
                except Exception as e:
                    problem = str(e) or type(e).__name__
                else:
                    if banner.startswith(RFB_BANNER_PREFIX):
                        self.report_progress(session_id, "the session's VNC server answers")
                        return
                    raise DriverError(f"the session's VNC port does not speak RFB "
                                      f"(got {banner!r})")
            if self.reactor.seconds() >= deadline:
                raise DriverError(f"the session's pod is ready but its VNC server does not "
                                  f"answer through the {self.vnc_mode} ({problem})")
            await deferLater(self.reactor, 0.2, lambda: None)

    async def _wake(self, session_id: str, template: SessionTemplate,
                    user: UserRef | None) -> None:
        dep = self._deployment(session_id)
        if dep is None or podstatus.deleting(dep):
            if user is None:
                user = self._user_from_objects(session_id)
            if user is None:
                raise DriverError("cannot wake this session: its Deployment is gone and the "
                                  "command names no user to find its home")
            await self._start(session_id, template, user, "", True)
            return
        if self._state(dep) == RUNNING:
            return
        check_capacity(self.capacity, self.usage(), template)
        name = k8s.name_of(dep)
        self._begin(session_id, "waking")
        try:
            await self._scale(name, 1)
            await self._until_ready(session_id)
        except BaseException:
            self._end(session_id)
            await self._undo(session_id, name, keep=True)
            raise
        self._end(session_id, running=True)
        log.info("session {session_id} woken", session_id=session_id)

    def _user_from_objects(self, session_id: str) -> UserRef | None:
        svc = self._service(session_id)
        if svc is None:
            return None
        notes = k8s.annotations_of(svc)
        if not notes.get(k8s.A_USER_ID):
            return None
        return UserRef(notes[k8s.A_USER_ID], notes.get(k8s.A_USERNAME, ""))

    async def _hibernate(self, session_id: str) -> None:
        dep = self._deployment(session_id)
        if dep is None or podstatus.deleting(dep):
            raise DriverError("the session is not running on this agent")
        self._begin(session_id, "hibernating")
        try:
            if k8s.replicas_of(dep) != 0:
                await self._scale(k8s.name_of(dep), 0)
            await self._wait(session_id, lambda: True if not self._pods(session_id) else None)
        finally:
            self._end(session_id)
        log.info("session {session_id} hibernated (replicas 0)", session_id=session_id)

    async def _stop(self, session_id: str, purge: bool) -> None:
        dep = self._deployment(session_id)
        svc = self._service(session_id)
        claim = k8s.annotations_of(dep or {}).get(k8s.A_CLAIM)
        self._begin(session_id, "stopping")
        try:
            if dep is not None:
                await self._delete(self._paths(k8s.name_of(dep))[0],
                                   k8s.DELETE_IN_BACKGROUND)
            if svc is not None:
                await self._delete(self._paths(k8s.name_of(svc))[1])
            await self._wait(session_id, lambda: True if self._deployment(session_id) is None
                             and self._service(session_id) is None else None)
            if purge and claim:
                await self._delete(path_for("v1", "persistentvolumeclaims", self.namespace,
                                            claim))
                log.info("deleted the home {claim} of session {session_id}", claim=claim,
                         session_id=session_id)
        finally:
            self._end(session_id)
        log.info("session {session_id} stopped", session_id=session_id)

    # -- watching what runs ----------------------------------------------------------------

    def _send_progress(self, session_id: str) -> None:
        sent = self._progress_sent.setdefault(session_id, set())
        for pod in self._pods(session_id):
            for message in podstatus.progress(pod, self._events_of(pod)):
                if message not in sent:
                    sent.add(message)
                    self.report_progress(session_id, message)

    def _watch_running(self, session_id: str) -> None:
        """A session we saw running that dies or vanishes on its own is reported once."""
        if session_id not in self._running_seen:
            return
        dep = self._deployment(session_id)
        if dep is None:
            self._running_seen.discard(session_id)
            self.report_status(session_id, "stopped",
                               "the session's Deployment was deleted outside StreamSpace")
            return
        for pod in self._pods(session_id):
            failure = podstatus.pod_failure(pod, self._events_of(pod))
            if failure:
                self._running_seen.discard(session_id)
                log.warn("session {session_id} failed: {reason}", session_id=session_id,
                         reason=failure)
                self.report_status(session_id, "failed", failure)
                d = defer.ensureDeferred(self._undo(session_id, k8s.name_of(dep), False))
                d.addErrback(lambda f: log.failure("removing a failed session", f))
                return

    def _collect_orphans(self) -> defer.Deferred:
        """Services whose session has no Deployment (an interrupted start or stop) are
        removed once they have been orphans for `orphan_grace` seconds."""
        now = self.reactor.seconds()
        doomed = []
        orphans = set()
        for svc in self.services.values():
            session_id = k8s.session_of(svc)
            if (not session_id or session_id in self._active
                    or self._deployment(session_id) is not None):
                continue
            orphans.add(session_id)
            since = self._orphans_since.setdefault(session_id, now)
            if now - since >= self.orphan_grace:
                doomed.append(svc)
        self._orphans_since = {s: t for s, t in self._orphans_since.items() if s in orphans}
        return defer.ensureDeferred(self._remove_orphans(doomed))

    async def _remove_orphans(self, doomed: list[dict[str, Any]]) -> None:
        for svc in doomed:
            session_id = k8s.session_of(svc)
            log.warn("removing Service {name} of session {session_id}: no Deployment explains "
                     "it for {grace:g} s (left by an interrupted start or stop)",
                     name=k8s.name_of(svc), session_id=session_id, grace=self.orphan_grace)
            try:
                await self._delete(self._paths(k8s.name_of(svc))[1])
            except DriverError as e:
                log.error("removing an orphaned Service: {err}", err=str(e))
            self._orphans_since.pop(session_id or "", None)
