"""The driver's session table and the engine operations on one session's container.

`DockerSession` is what the driver knows of a session: its labels (which carry everything
a restarted agent needs), its container id, its state as the driver sees it. `ContainerOps`
does the engine calls around it, each failure a sentence (DriverError), and keeps the
table: removing a session's container also takes it off the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from agent.platforms.base import DriverError, VncEndpoint
from agent.platforms.docker import spec as S
from agent.platforms.docker.containers import LOG_LINES
from agent.platforms.docker.engine import EngineClient, EngineError

log = Logger()


@dataclass(eq=False)
class DockerSession:
    session_id: str
    labels: dict[str, str]
    container_id: str | None = None
    state: str = "starting"  # starting -> running <-> hibernated; stopping
    endpoint: VncEndpoint | None = None
    exited: bool = False  # the engine said it died
    oom: bool = False  # the engine said a process of it was killed for memory
    expected_exit: bool = False  # we are stopping it: its death is no news
    aborted: bool = False
    removal: list[defer.Deferred] | None = None  # while removed: who else waits for it

    @property
    def cpu(self) -> float:
        return float(self.labels.get(S.CPU) or 0)

    @property
    def memory_mb(self) -> int:
        return int(self.labels.get(S.MEMORY_MB) or 0)

    @property
    def vnc_port(self) -> int:
        return int(self.labels.get(S.VNC_PORT) or 0)

    @property
    def paused_mode(self) -> bool:
        return self.labels.get(S.HIBERNATE) == "pause"

    @property
    def volume(self) -> str:
        return self.labels.get(S.HOME_VOLUME, "")

    @property
    def persistent(self) -> bool:
        return self.labels.get(S.PERSISTENT_HOME) == "true"

    @property
    def ref(self) -> str:
        """How the engine's URLs name its container."""
        return quote(self.container_id or S.container_name(self.session_id))


class ContainerOps:
    def __init__(self, client: EngineClient, agent_id: str, stop_grace: int = 5) -> None:
        self.client, self.agent_id, self.stop_grace = client, agent_id, stop_grace
        self.sessions: dict[str, DockerSession] = {}

    def filters(self, **labels: str) -> dict[str, list[str]]:
        """This agent's containers (and volumes), optionally narrowed by more labels."""
        selected = [f"{S.MANAGED_BY}=streamspace", f"{S.AGENT}={self.agent_id}"]
        return {"label": selected + [f"{k}={v}" for k, v in labels.items()]}

    async def call(self, method: str, path: str, params: dict | None = None,
                   body: dict | None = None, timeout: float = 30.0, missing_ok: bool = False,
                   conflict_ok: bool = False) -> Any:
        """An engine request whose failure is a sentence (DriverError)."""
        try:
            return await self.client.call(method, path, params, body, timeout=timeout)
        except EngineError as e:
            if (missing_ok and e.status == 404) or (conflict_ok and e.status == 409):
                return None
            raise DriverError(f"the Docker engine refused to {_verb(method, path)}: "
                              f"{e.message}") from e

    async def inspect(self, sess: DockerSession) -> dict:
        """`GET /containers/{id}/json` (EngineError, with its status, when it fails)."""
        return await self.client.call("GET", f"/containers/{sess.ref}/json")

    async def logs(self, sess: DockerSession) -> str:
        try:
            return await self.client.logs_tail(sess.container_id or sess.ref, LOG_LINES)
        except EngineError:
            return ""

    async def stop(self, sess: DockerSession, grace: int | None = None) -> None:
        """Stop the container (SIGTERM, SIGKILL after the grace period); its death is
        expected. A stopped, paused or missing container is not an error."""
        sess.expected_exit = True
        grace = self.stop_grace if grace is None else grace
        await self.call("POST", f"/containers/{sess.ref}/stop", {"t": grace},
                        timeout=grace + 30, missing_ok=True, conflict_ok=True)

    async def rename(self, sess: DockerSession, name: str) -> None:
        await self.call("POST", f"/containers/{sess.ref}/rename", {"name": name},
                        conflict_ok=True)

    async def find(self, session_id: str) -> DockerSession | None:
        """A container of this session the table does not know (e.g. left by another run)."""
        found = await self.client.call("GET", "/containers/json", {
            "all": 1, "filters": self.filters(**{S.SESSION: session_id})})
        if not found:
            return None
        return DockerSession(session_id, dict(found[0].get("Labels") or {}),
                             container_id=found[0]["Id"])

    async def create(self, sess: DockerSession, body: dict) -> str:
        """Create the session's container; a leftover of this agent in the way (a start
        cut short by a crash) is removed first. Fires with the container id."""
        name = S.container_name(sess.session_id)
        for attempt in range(2):
            try:
                made = await self.client.call("POST", "/containers/create", {"name": name},
                                              body=body)
                sess.container_id = made["Id"]
                return made["Id"]
            except EngineError as e:
                if e.status == 409 and attempt == 0 and await self._remove_leftover(name):
                    continue
                if e.status == 409:
                    raise DriverError(f"a container named {name} already exists on the "
                                      "Docker engine and is not this agent's") from e
                raise DriverError(f"the Docker engine refused the session's container: "
                                  f"{e.message}") from e
        raise AssertionError("unreachable")

    async def _remove_leftover(self, name: str) -> bool:
        try:
            info = await self.client.call("GET", f"/containers/{name}/json")
        except EngineError:
            return True  # gone in between: try again
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(S.AGENT) != self.agent_id:
            return False
        await self.call("DELETE", f"/containers/{info['Id']}", {"force": 1}, missing_ok=True)
        return True

    async def remove(self, sess: DockerSession, keep_volume: bool,
                     graceful: bool = False) -> None:
        """The container (and its home volume unless kept) away, the session off the
        table, whatever state it was in. A second caller while it is being removed (a
        stop arriving as the driver clears away a container that ended by itself) waits
        for that removal and shares its outcome: the engine refuses a second removal of
        the same container (409, "already in progress")."""
        if sess.removal is not None:
            waiting: defer.Deferred = defer.Deferred()
            sess.removal.append(waiting)
            await waiting
            return
        sess.removal = []
        outcome: Failure | None = None
        try:
            await self._remove(sess, keep_volume, graceful)
        except BaseException:
            outcome = Failure()
            raise
        finally:
            waiters, sess.removal = sess.removal, None
            for waiting in waiters:
                if outcome is None:
                    waiting.callback(None)
                else:
                    waiting.errback(outcome)

    async def _remove(self, sess: DockerSession, keep_volume: bool, graceful: bool) -> None:
        sess.state, sess.expected_exit = "stopping", True
        try:
            if sess.container_id is not None:
                if graceful:
                    await self.stop(sess)
                await self.call("DELETE", f"/containers/{sess.ref}", {"force": 1},
                                missing_ok=True)
            if not keep_volume and sess.volume:
                try:
                    await self.call("DELETE", f"/volumes/{quote(sess.volume)}",
                                    missing_ok=True)
                except DriverError as e:  # in use by another session of the same home
                    log.warn("kept volume {volume}: {e}", volume=sess.volume, e=str(e))
        finally:
            if self.sessions.get(sess.session_id) is sess:
                del self.sessions[sess.session_id]


def _verb(method: str, path: str) -> str:
    """'remove the session's container', 'start the session's container'..."""
    parts = path.strip("/").split("/")
    kind = {"containers": "container", "volumes": "volume"}.get(parts[0], parts[0])
    if method == "DELETE":
        return f"remove the session's {kind}"
    action = parts[-1] if len(parts) > 2 or parts[-1] == "create" else "change"
    return f"{action} the session's {kind}"
