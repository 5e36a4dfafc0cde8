"""The Docker driver against a real dockerd (the suite's own) and the real session image:
containers start with the labels and confinement the `docker` CLI sees, a real VNC client
sees their desktop, hibernate/wake keep the home, failures read as sentences within
seconds, deaths are reported from the events stream, a restarted driver finds its
containers again, and a cancelled start leaves nothing behind."""

from __future__ import annotations

import json
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from agent.platforms.base import Capacity, CapacityError, DriverError, SessionTemplate, UserRef
from agent.platforms.docker import spec as S
from agent.platforms.docker.driver import DockerDriver
from tests.support.docker_sessions import chromium_image, rfb_banner, screen_until_drawn
from tests.support.http import poll
from tests.support.polling import until
from tests.support.processes import REPO

pytestmark = pytest.mark.slow

ALICE = UserRef("u-alice", "alice")
FAILURE_DEADLINE = 10.0  # the promise: a failed start says why within 10 s


def cli(docker, *args: str, check: bool = True):
    """The real `docker` CLI, off the reactor thread (the driver under test runs on it)."""
    return threads.deferToThread(docker.engine.cli, *args, check=check)


async def inspect(docker, container: str) -> dict:
    return json.loads((await cli(docker, "inspect", container)).stdout)[0]


async def failure_of(d: defer.Deferred) -> Exception:
    d.addTimeout(FAILURE_DEADLINE, reactor)
    try:
        await d
    except defer.TimeoutError:
        raise AssertionError(f"no failure within {FAILURE_DEADLINE:g} s") from None
    except Exception as e:
        return e
    raise AssertionError("the start succeeded")


@pytest_twisted.ensureDeferred
async def test_session_runs_confined_labelled_and_seen_by_a_vnc_client(docker, tmp_path):
    driver = await docker.started()
    await driver.start_session("s1", docker.template(), ALICE, "my terminal")
    [info] = driver.list_sessions()
    assert (info.session_id, info.state) == ("s1", "running")
    assert driver.usage().sessions == 1 and driver.usage().cpu == 0.5
    assert ("s1", "container created") in docker.progress
    endpoint = driver.vnc_address("s1")
    assert endpoint.host == "127.0.0.1"
    assert (await rfb_banner(await driver.vnc_endpoint("s1"))).startswith(b"RFB 003.")

    # what the real docker CLI sees (the contract with operators and their tooling)
    [listed] = await threads.deferToThread(docker.containers, **{S.SESSION: "s1"})
    assert listed["Names"] == "streamspace-s1" and listed["State"] == "running"
    c = await inspect(docker, listed["ID"])
    labels = c["Config"]["Labels"]
    assert {k: labels[k] for k in (S.SESSION, S.USER, S.TEMPLATE, S.AGENT, S.MANAGED_BY)} == {
        S.SESSION: "s1", S.USER: "u-alice", S.TEMPLATE: "terminal", S.AGENT: docker.agent_id,
        S.MANAGED_BY: "streamspace"}
    host = c["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"] and not host["Privileged"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True and host["NetworkMode"] == "host"
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 256 << 20
    assert c["Config"]["User"] == "1000:1000"
    status = (await cli(docker, "exec", listed["ID"], "cat", "/proc/1/status")).stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[0] == "1000" and fields["NoNewPrivs"].strip() == "1"
    assert int(fields["CapEff"], 16) == 0
    # with host networking the VNC port is on loopback only: nothing on a public address
    listening = (await cli(docker, "exec", listed["ID"], "cat", "/proc/net/tcp")).stdout
    ours = [line.split()[1] for line in listening.splitlines()[1:]
            if line.split()[1].endswith(f":{endpoint.port:04X}") and line.split()[3] == "0A"]
    assert ours == [f"0100007F:{endpoint.port:04X}"], ours

    # a real VNC client sees the desktop: the xterm drawn, not a blank frame
    assert await screen_until_drawn(endpoint.port, tmp_path / "s1.png") >= 30

    await driver.stop_session("s1")
    assert driver.list_sessions() == [] and driver.usage().sessions == 0
    assert await threads.deferToThread(docker.leftovers) == {"containers": [], "volumes": []}


@pytest_twisted.ensureDeferred
async def test_hibernate_stops_wake_starts_and_the_home_is_kept(docker):
    driver = await docker.started()
    template = docker.template(persistent_home=True)
    await driver.start_session("s2", template, ALICE, "")
    cid = driver.container_id("s2")
    await cli(docker, "exec", cid, "sh", "-c", "echo kept > $HOME/note")

    await driver.hibernate_session("s2")
    c = await inspect(docker, cid)
    assert c["Name"] == "/streamspace-s2-hibernated" and c["State"]["Status"] == "exited"
    assert [(s.session_id, s.state) for s in driver.list_sessions()] == [("s2", "hibernated")]
    assert driver.usage().sessions == 0
    with pytest.raises(DriverError):
        await driver.vnc_endpoint("s2")

    await driver.wake_session("s2", template, None)
    c = await inspect(docker, cid)
    assert c["Name"] == "/streamspace-s2" and c["State"]["Running"]
    assert (await rfb_banner(await driver.vnc_endpoint("s2"))).startswith(b"RFB 003.")
    assert (await cli(docker, "exec", cid, "cat", "/home/streamspace/note")).stdout == "kept\n"

    # stop removes the container; the user's home for this template stays for next time
    await driver.stop_session("s2")
    volume = f"streamspace-home-{ALICE.id}-terminal"
    assert await threads.deferToThread(docker.leftovers) == {"containers": [],
                                                             "volumes": [volume]}
    await driver.start_session("s3", template, ALICE, "")
    note = await cli(docker, "exec", driver.container_id("s3"), "cat", "/home/streamspace/note")
    assert note.stdout == "kept\n"
    await driver.stop_session("s3", purge=True)
    assert await threads.deferToThread(docker.leftovers) == {"containers": [], "volumes": []}


@pytest_twisted.ensureDeferred
async def test_pause_mode_freezes_the_programs_and_wake_thaws_them(docker):
    driver = await docker.started()
    template = docker.template(docker={"hibernate": "pause"})
    await driver.start_session("s4", template, ALICE, "")
    cid = driver.container_id("s4")
    before = (await inspect(docker, cid))["State"]["Pid"]
    await driver.hibernate_session("s4")
    state = (await inspect(docker, cid))["State"]
    assert state["Paused"] and state["Status"] == "paused" and state["Pid"] == before
    assert driver.list_sessions()[0].state == "hibernated"
    assert driver.usage().sessions == 0 and driver.usage().memory_gb == 0.25  # still held
    await driver.wake_session("s4", template, None)
    state = (await inspect(docker, cid))["State"]
    assert state["Running"] and not state["Paused"] and state["Pid"] == before  # same process
    assert (await rfb_banner(await driver.vnc_endpoint("s4"))).startswith(b"RFB 003.")
    await driver.hibernate_session("s4")
    await driver.stop_session("s4")  # a paused container is removed too
    assert await threads.deferToThread(docker.leftovers) == {"containers": [], "volumes": []}

    # a hibernated container removed behind the agent's back leaves the table
    await driver.start_session("s5", docker.template(), ALICE, "")
    await driver.hibernate_session("s5")
    await cli(docker, "rm", driver.container_id("s5"))
    await until(lambda: not driver.list_sessions(), what="the removal to be noticed")
    assert docker.statuses == [("s5", "failed", "the hibernated session's container was "
                                                "removed from the Docker engine")]


@pytest_twisted.ensureDeferred
async def test_failed_starts_say_why_within_seconds_and_leave_nothing(docker):
    driver = await docker.started(ready_timeout=60)  # so only the events can tell in time
    exits = docker.template(name="exits", docker={"entrypoint": "echo boom >&2; exit 3"})
    error = await failure_of(driver.start_session("f1", exits, ALICE, ""))
    assert isinstance(error, DriverError)
    assert "exited at start with code 3" in str(error) and "boom" in str(error)

    hungry = docker.template(name="hungry", memory_mb=32, docker={
        "entrypoint": "echo filling memory; tail /dev/zero"})
    error = await failure_of(driver.start_session("f2", hungry, ALICE, ""))
    assert "ran out of memory (its limit is 32 MB)" in str(error), error
    assert "filling memory" in str(error)

    missing = docker.template(name="missing", docker={"image": "streamspace/nonexistent:1"})
    error = await failure_of(driver.start_session("f3", missing, ALICE, ""))
    assert str(error).startswith("the image streamspace/nonexistent:1 could not be pulled: ")
    assert ("f3", "pulling image streamspace/nonexistent:1") in docker.progress
    never = await docker.started(pull_policy="never")
    error = await failure_of(never.start_session("f4", missing, ALICE, ""))
    assert "is not on this Docker engine" in str(error) and "DOCKER_PULL=never" in str(error)

    rooted = docker.template(docker={"user": "0:0"})
    with pytest.raises(DriverError, match="never run as root"):
        await driver.start_session("f5", rooted, ALICE, "")
    assert driver.list_sessions() == []
    assert await threads.deferToThread(docker.leftovers) == {"containers": [], "volumes": []}


@pytest_twisted.ensureDeferred
async def test_containers_that_end_on_their_own_are_reported(docker):
    driver = await docker.started()
    await driver.start_session("d1", docker.template(), ALICE, "")
    await cli(docker, "kill", driver.container_id("d1"))
    await until(lambda: docker.statuses, timeout=10, what="the death to be reported")
    [(sid, state, reason)] = docker.statuses
    assert (sid, state) == ("d1", "failed") and "exited with code 137" in reason, reason
    await until(lambda: not driver.list_sessions(), what="the session to leave the table")

    # an application that ends by itself with status 0: the session stopped, no failure
    quits = docker.template(docker={"command": "while [ ! -e /tmp/quit ]; do sleep 0.1; done"})
    await driver.start_session("d2", quits, ALICE, "")
    await cli(docker, "exec", driver.container_id("d2"), "touch", "/tmp/quit")
    await until(lambda: len(docker.statuses) == 2, timeout=10, what="the exit to be reported")
    assert docker.statuses[1] == ("d2", "stopped", "the application exited")
    await poll(lambda: threads.deferToThread(lambda: not docker.containers()),
               what="its container to be removed")


@pytest_twisted.ensureDeferred
async def test_a_restarted_driver_finds_its_containers_and_what_died_meanwhile(docker):
    first = await docker.started()
    template = docker.template()
    for sid in ("r1", "r2", "r3"):
        await first.start_session(sid, template, ALICE, "")
    await first.hibernate_session("r2")
    endpoint = first.vnc_address("r1")
    dead = first.container_id("r3")
    await first.shutdown()  # the agent goes away; its sessions do not
    await cli(docker, "kill", dead)  # ... and one dies while nobody watches
    assert len(await threads.deferToThread(docker.containers)) == 3

    other = await docker.started()  # same agent id: the agent restarted
    assert sorted((s.session_id, s.state) for s in other.list_sessions()) == [
        ("r1", "running"), ("r2", "hibernated")]
    assert other.vnc_address("r1") == endpoint
    assert (await rfb_banner(await other.vnc_endpoint("r1"))).startswith(b"RFB 003.")
    [(sid, state, reason)] = docker.statuses
    assert (sid, state) == ("r3", "failed") and "code 137" in reason
    assert sorted(c["Names"] for c in await threads.deferToThread(docker.containers)) == [
        "streamspace-r1", "streamspace-r2-hibernated"]
    await other.wake_session("r2", template, None)  # a rediscovered hibernation wakes

    stranger = DockerDriver(reactor, other.client, Capacity(), agent_id="someone-else")
    await stranger.start()  # another agent on the same engine sees none of them
    assert stranger.list_sessions() == []
    await stranger.events.stop()
    for sid in ("r1", "r2"):
        await other.stop_session(sid)


@pytest_twisted.ensureDeferred
async def test_a_cancelled_start_leaves_nothing_behind(docker):
    driver = await docker.started(ready_timeout=60)
    # runs, but never speaks RFB (no command: the image's CMD does not follow an entrypoint)
    silent = docker.template(docker={"entrypoint": ["sleep", "300"], "command": None})
    starting = driver.start_session("c1", silent, ALICE, "")
    await until(lambda: driver.container_id("c1") and
                ("c1", "container started; waiting for its VNC server") in docker.progress,
                timeout=10, what="the container to be started")
    assert (await inspect(docker, driver.container_id("c1")))["State"]["Running"]
    starting.cancel()
    with pytest.raises(defer.CancelledError):
        await starting
    assert driver.list_sessions() == []
    assert await threads.deferToThread(docker.leftovers) == {"containers": [], "volumes": []}

    # cancelled at once, with its first engine request in flight
    starting = driver.start_session("c2", silent, ALICE, "")
    starting.cancel()
    with pytest.raises(defer.CancelledError):
        await starting
    assert driver.list_sessions() == []
    assert await threads.deferToThread(docker.leftovers) == {"containers": [], "volumes": []}


@pytest_twisted.ensureDeferred
async def test_capacity_is_enforced_before_anything_is_created(docker):
    driver = await docker.started(Capacity(max_sessions=1))
    await driver.start_session("k1", docker.template(), ALICE, "")
    with pytest.raises(CapacityError, match="MAX_SESSIONS"):
        await driver.start_session("k2", docker.template(), ALICE, "")
    assert [c["Names"] for c in await threads.deferToThread(docker.containers)] == [
        "streamspace-k1"]
    await driver.stop_session("k1")


@pytest_twisted.ensureDeferred
async def test_wake_on_a_port_taken_meanwhile_makes_a_new_container_on_the_same_home(docker):
    driver = await docker.started()
    template = docker.template()  # a per-session volume: it must survive the recreation
    await driver.start_session("w1", template, ALICE, "")
    old, port = driver.container_id("w1"), driver.vnc_address("w1").port
    await cli(docker, "exec", old, "sh", "-c", "echo kept > $HOME/note")
    await driver.hibernate_session("w1")
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port))
    squatter.listen(1)
    try:
        await driver.wake_session("w1", template, None)
    finally:
        squatter.close()
    new = driver.container_id("w1")
    assert new != old and driver.vnc_address("w1").port != port
    assert [c["ID"] for c in await threads.deferToThread(docker.containers)] == [new]
    assert (await cli(docker, "exec", new, "cat", "/home/streamspace/note")).stdout == "kept\n"
    assert (await rfb_banner(await driver.vnc_endpoint("w1"))).startswith(b"RFB 003.")
    await driver.stop_session("w1")
    assert await threads.deferToThread(docker.leftovers) == {"containers": [], "volumes": []}


def catalog_templates() -> list[dict]:
    data = json.loads((REPO / "catalog" / "templates.json").read_text())
    return [t for t in data["templates"] if "docker" in t["platforms"]]


@pytest.mark.parametrize("tpl", catalog_templates(), ids=lambda t: t["name"])
@pytest_twisted.ensureDeferred
async def test_the_default_catalog_runs_on_the_docker_platform(docker, tmp_path, tpl):
    """Each catalog template as written: its image names resolve to the images built from
    deploy/session-images (tagged so on the test engine)."""
    built = {"streamspace/session:bookworm": docker.image,
             "streamspace/session-chromium:bookworm":
                 await threads.deferToThread(chromium_image, docker.engine)}
    image = tpl["platforms"]["docker"]["image"]
    assert image in built, f"{image} is not built from deploy/session-images"
    await cli(docker, "tag", built[image], image)
    driver = await docker.started()
    await driver.start_session("cat-1", SessionTemplate.from_json(tpl), ALICE, "")
    endpoint = driver.vnc_address("cat-1")
    await screen_until_drawn(endpoint.port, tmp_path / "screen.png", minimum=100)
    await driver.stop_session("cat-1", purge=True)
    assert docker.statuses == []
