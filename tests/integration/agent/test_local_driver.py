"""The local driver with real Xvnc, real bubblewrap sandboxes, real Unix accounts and real
applications: sessions start, are seen by a real VNC client, hibernate and wake on their
home, die and get reported, and stop without leaving a process, a sandbox or an account
behind. Isolation itself (secrets, other sessions) is in test_local_isolation.py."""

from __future__ import annotations

import os
import pwd
import signal
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectError

from agent.platforms.base import (
    Capacity,
    CapacityError,
    DriverError,
    SessionTemplate,
    UserRef,
)
from agent.platforms.local import LocalDriver
from tests.integration.agent.conftest import block
from tests.support.polling import until
from tests.support.xvnc_sessions import (
    capture_through,
    distinct_colours,
    inner_pids,
    kill_leftovers,
    session_accounts,
    session_pids,
    uid_of,
    xvnc_cmdlines,
)

pytestmark = pytest.mark.slow

XTERM = {"name": "xterm", "display_name": "Terminal", "cpu": 0.5, "memory_mb": 256,
         "env": {"STREAMSPACE_TEST": "yes"}, "persistent_home": False,
         "platforms": {"local": {"command": "xterm -fa Monospace -fs 14"}}}
ALICE = UserRef("u-alice", "alice")


def template(**changes) -> SessionTemplate:
    data = dict(XTERM)
    local = dict(changes.pop("local", {}))
    if local:
        data["platforms"] = {"local": {**XTERM["platforms"]["local"], **local}}
    data.update(changes)
    return SessionTemplate.from_json(data)


@pytest.fixture
def local(tmp_path):
    state = tmp_path / "agent"
    statuses: list[tuple[str, str, str]] = []
    drivers: list[LocalDriver] = []

    async def make(capacity: Capacity | None = None) -> LocalDriver:
        driver = LocalDriver(reactor, state, capacity or Capacity(), stop_grace=2.0)
        await driver.start()
        assert driver.isolation.isolated, driver.isolation.problem
        driver.set_status_listener(lambda *a: statuses.append(a))
        drivers.append(driver)
        return driver

    yield SimpleNamespace(make=make, state=state, statuses=statuses)
    for driver in drivers:
        block(driver.shutdown())
    accounts = session_accounts(state)
    leaked = kill_leftovers(state)
    assert not leaked, f"session processes left behind: {leaked}"
    assert not accounts, f"session accounts left behind: {accounts}"


def released(driver: LocalDriver, session_id: str, xvnc_pid: int) -> bool:
    """Our Xvnc is gone and its sandbox (private /tmp with the X lock and socket, the VNC
    socket, the cookie) removed."""
    if Path(f"/proc/{xvnc_pid}").exists():
        stat = Path(f"/proc/{xvnc_pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            return False
    return not driver.store.sandbox_dir(session_id).exists()


async def _banner_through(endpoint) -> bytes:
    """Read the RFB banner through an IStreamClientEndpoint (what the tunnel dials)."""
    from twisted.internet import protocol

    got = defer.Deferred()

    class Banner(protocol.Protocol):
        def dataReceived(self, data):
            if not got.called:
                got.callback(data[:12])
            self.transport.loseConnection()

    await endpoint.connect(protocol.Factory.forProtocol(Banner))
    got.addTimeout(5, reactor)
    banner = await got
    assert banner.startswith(b"RFB 003.")
    return banner


async def screenshot_until_drawn(driver: LocalDriver, session_id: str, path: Path,
                                 minimum: int = 30) -> int:
    """The app draws a moment after Xvnc is up: capture (a real VNC client, through the
    driver's endpoint) until the frame shows it."""
    seen = [0]

    async def attempt() -> bool:
        await capture_through(await driver.vnc_endpoint(session_id), path)
        seen[0] = distinct_colours(path)
        return seen[0] >= minimum

    deadline = reactor.seconds() + 20
    while not await attempt():
        assert reactor.seconds() < deadline, f"only {seen[0]} colours on screen"
    return seen[0]


def environ(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


@pytest_twisted.ensureDeferred
async def test_session_runs_is_seen_by_a_vnc_client_and_stops_clean(local, tmp_path):
    driver = await local.make()
    await driver.start_session("s1", template(), ALICE, "my terminal")
    [info] = driver.list_sessions()
    assert (info.session_id, info.state) == ("s1", "running")
    assert driver.usage().sessions == 1 and driver.usage().cpu == 0.5
    # the driver's endpoint reaches this session's VNC server; unknown sessions have none
    endpoint = await driver.vnc_endpoint("s1")
    assert await _banner_through(endpoint)
    with pytest.raises(DriverError, match="not running"):
        await driver.vnc_endpoint("s-unknown")
    # a real VNC client completes the handshake and sees the terminal, not a blank frame
    colours = await screenshot_until_drawn(driver, "s1", tmp_path / "screen.png")
    assert colours >= 30
    # the app runs in the display as the user's own account, with its own HOME and the
    # template's environment
    record = driver.store.load("s1")
    [account] = session_accounts(local.state)
    entry = pwd.getpwnam(account)
    [xterm] = await until(lambda: inner_pids(local.state, "s1", "xterm"), 5, what="xterm")
    [xvnc] = inner_pids(local.state, "s1", "Xvnc")
    assert uid_of(xterm) == uid_of(xvnc) == entry.pw_uid != 0
    app_env = environ(xterm)
    assert f"DISPLAY=:{record.display}".encode() in app_env
    assert f"HOME=/home/{account}".encode() in app_env
    assert b"XAUTHORITY=/run/streamspace/Xauthority" in app_env
    assert b"STREAMSPACE_TEST=yes" in app_env
    assert not any(e.startswith(b"AGENT_TOKEN=") for e in app_env)
    # the home is the account's and only the account's
    home = Path(record.home)
    assert home.is_dir() and home.stat().st_uid == entry.pw_uid
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    # each sandbox leads its own process group
    assert os.getpgid(record.app_pid) == record.app_pid
    assert os.getpgid(record.xvnc_pid) == record.xvnc_pid
    assert xvnc_cmdlines(local.state)

    await driver.stop_session("s1")
    assert session_pids(local.state) == []
    assert released(driver, "s1", record.xvnc_pid)
    assert driver.list_sessions() == [] and driver.usage().sessions == 0
    await until(lambda: not home.exists(), 5, what="the session home removed")
    # the user's last session is gone: so is the account
    assert session_accounts(local.state) == []
    assert local.statuses == []  # a stop that was asked for is not an unsolicited change
    # an endpoint handed out before the stop no longer leads anywhere
    with pytest.raises(ConnectError):
        await _banner_through(endpoint)
    # stopping again (redelivery, or a session that is already gone) succeeds
    await driver.stop_session("s1")


@pytest_twisted.ensureDeferred
async def test_hibernate_and_wake_keep_the_persistent_home(local):
    driver = await local.make()
    tpl = template(persistent_home=True,
                   local={"command": 'echo "$STREAMSPACE_SESSION_NAME" >> "$HOME/notes.txt"; '
                                     "exec xterm"})
    await driver.start_session("s1", tpl, ALICE, "first")
    record = driver.store.load("s1")
    home = Path(record.home)
    await until(lambda: (home / "notes.txt").exists(), 5, what="the app writing to HOME")

    await driver.hibernate_session("s1")
    assert session_pids(local.state) == []
    assert released(driver, "s1", record.xvnc_pid)
    assert [(i.session_id, i.state) for i in driver.list_sessions()] == [("s1", "hibernated")]
    assert driver.usage().sessions == 0  # a hibernated session reserves nothing
    assert (home / "notes.txt").read_text() == "first\n"
    [first_uid] = {home.stat().st_uid, (home / "notes.txt").stat().st_uid}
    assert session_accounts(local.state) == []  # no process of the user: no account

    # wake needs no user: the agent kept the session's record
    await driver.wake_session("s1", tpl, None)
    assert await _banner_through(await driver.vnc_endpoint("s1"))
    assert driver.store.load("s1").home == str(home)
    await until(lambda: (home / "notes.txt").read_text() == "first\nfirst\n", 5,
                what="the woken app appending to the same HOME")
    # the user's new account has the uid of the one removed: the home needed no re-owning
    [account] = session_accounts(local.state)
    assert pwd.getpwnam(account).pw_uid == first_uid
    assert (home / "notes.txt").stat().st_uid == first_uid

    await driver.stop_session("s1")
    assert session_pids(local.state) == []
    # a persistent home belongs to the user and template: it outlives the session
    assert (home / "notes.txt").exists()
    assert home == local.state.absolute() / "homes" / "users" / "u-alice" / "xterm"


@pytest_twisted.ensureDeferred
async def test_non_persistent_home_survives_hibernate_but_not_stop(local):
    driver = await local.make()
    tpl = template(local={"command": 'touch "$HOME/here"; exec xterm'})
    await driver.start_session("s2", tpl, ALICE, "")
    home = Path(driver.store.load("s2").home)
    await until(lambda: (home / "here").exists(), 5, what="the marker file")
    await driver.hibernate_session("s2")
    assert (home / "here").exists()
    await driver.wake_session("s2", tpl, ALICE)
    await driver.stop_session("s2")
    await until(lambda: not home.exists(), 5, what="the home removed")


@pytest_twisted.ensureDeferred
async def test_app_killed_with_sigkill_is_reported(local):
    driver = await local.make()
    await driver.start_session("s1", template(), ALICE, "")
    record = driver.store.load("s1")
    [xterm] = await until(lambda: inner_pids(local.state, "s1", "xterm"), 5, what="xterm")
    os.kill(xterm, signal.SIGKILL)
    await until(lambda: local.statuses, 10, what="a session_status")
    [(session_id, state, reason)] = local.statuses
    assert (session_id, state) == ("s1", "failed")
    assert "the application was killed by SIGKILL" in reason
    # the rest of the session is cleaned up: Xvnc stopped, display free, nothing listed
    await until(lambda: session_pids(local.state) == [], 10, what="Xvnc stopped")
    await until(lambda: released(driver, "s1", record.xvnc_pid), 5, what="the display freed")
    await until(lambda: session_accounts(local.state) == [], 5, what="the account removed")
    assert driver.list_sessions() == []
    # the control plane may still send stop (e.g. the user deletes the session)
    await driver.stop_session("s1")


@pytest_twisted.ensureDeferred
async def test_app_exiting_or_xvnc_dying_is_reported(local):
    driver = await local.make()
    await driver.start_session("quits", template(local={"command": "true"}), ALICE, "")
    await until(lambda: local.statuses, 10, what="a session_status")
    assert local.statuses[0] == ("quits", "stopped", "the application exited")

    await driver.start_session("s2", template(), ALICE, "")
    [xvnc] = inner_pids(local.state, "s2", "Xvnc")
    os.kill(xvnc, signal.SIGKILL)
    await until(lambda: len(local.statuses) == 2, 10, what="a second session_status")
    session_id, state, reason = local.statuses[1]
    assert (session_id, state) == ("s2", "failed")
    assert reason.startswith("the VNC server was killed by SIGKILL")
    await until(lambda: session_pids(local.state) == [], 10, what="the app stopped too")


@pytest_twisted.ensureDeferred
async def test_a_restart_while_the_ended_session_is_torn_down_waits_and_runs(local):
    """A Restart arrives while the agent still tears down the session that just ended
    (processes, sandbox, account): the start waits for the teardown, then runs afresh."""
    driver = await local.make()
    await driver.start_session("again", template(local={"command": "true"}), ALICE, "")
    await until(lambda: local.statuses, 10, what="the session to end by itself")
    assert driver._sessions["again"].state == "stopping"  # the teardown is under way
    await driver.start_session("again", template(), ALICE, "")
    assert [(i.session_id, i.state) for i in driver.list_sessions()] == [("again", "running")]
    await driver.stop_session("again")


@pytest_twisted.ensureDeferred
async def test_capacity_and_bad_templates_are_refused_with_a_reason(local):
    driver = await local.make(Capacity(max_sessions=1, max_cpu=4, max_memory_gb=0))
    await driver.start_session("s1", template(), ALICE, "")
    with pytest.raises(CapacityError, match=r"already runs 1 of 1 sessions \(MAX_SESSIONS\)"):
        await driver.start_session("s2", template(), ALICE, "")
    await driver.stop_session("s1")
    with pytest.raises(CapacityError, match="not enough CPU"):
        await driver.start_session("big", template(cpu=8), ALICE, "")
    with pytest.raises(DriverError, match="no platforms.local.command"):
        await driver.start_session("s3", template(platforms={}), ALICE, "")
    with pytest.raises(DriverError, match="not a valid session id"):
        await driver.start_session("../etc", template(), ALICE, "")
    with pytest.raises(DriverError, match="not running on this agent"):
        await driver.hibernate_session("never-started")
    assert session_pids(local.state) == []


@pytest_twisted.ensureDeferred
async def test_concurrent_starts_get_distinct_displays_and_one_account_per_user(local):
    driver = await local.make()
    bob = UserRef("u-bob", "bob")
    await defer.gatherResults([
        driver.start_session(f"c{i}", template(), ALICE if i < 2 else bob, "")
        for i in range(3)])
    records = [driver.store.load(f"c{i}") for i in range(3)]
    assert len({r.display for r in records}) == 3
    # alice's two sessions share her account; bob has his own
    uids = [uid_of((await until(lambda i=i: inner_pids(local.state, f"c{i}", "xterm"), 5,
                                what="xterm"))[0]) for i in range(3)]
    assert uids[0] == uids[1] != uids[2] and len(session_accounts(local.state)) == 2
    await driver.stop_session("c0")
    assert len(session_accounts(local.state)) == 2  # alice still runs c1
    await driver.shutdown()
    assert session_pids(local.state) == []
    assert all(released(driver, f"c{i}", r.xvnc_pid) for i, r in enumerate(records))
    assert session_accounts(local.state) == []


@pytest_twisted.ensureDeferred
async def test_a_restarted_agent_reaps_what_a_killed_one_left(local):
    crashed = await local.make()
    await crashed.start_session("s1", template(), ALICE, "")
    assert session_pids(local.state) and session_accounts(local.state)
    # the agent "dies" without stopping anything; a new one starts on the same state dir
    crashed._sessions.clear()
    crashed.accounts._holders.clear()
    fresh = await local.make()
    await until(lambda: session_pids(local.state) == [], 10, what="orphans reaped")
    await until(lambda: not fresh.store.sandbox_dir("s1").exists(), 5,
                what="the stale sandbox removed")
    assert session_accounts(local.state) == []
    assert fresh.list_sessions() == []
    assert fresh.store.load("s1").state == "ended"


def catalog_templates() -> list[dict]:
    import json

    path = Path(__file__).resolve().parents[3] / "catalog" / "templates.json"
    data = json.loads(path.read_text())
    return data["templates"] if isinstance(data, dict) else data


@pytest.mark.parametrize("tpl", catalog_templates(), ids=lambda t: t["name"])
@pytest_twisted.ensureDeferred
async def test_the_default_catalog_runs_on_the_local_platform(local, tmp_path, tpl):
    import shlex
    import shutil

    program = shlex.split(tpl["platforms"]["local"]["command"])[0]
    assert shutil.which(program), f"{program} is not installed (scripts/setup.sh installs it)"
    driver = await local.make()
    await driver.start_session("cat-1", SessionTemplate.from_json(tpl), ALICE, "")
    await screenshot_until_drawn(driver, "cat-1", tmp_path / "screen.png", minimum=100)
    await driver.stop_session("cat-1")
    assert session_pids(local.state) == []
    assert local.statuses == []


@pytest_twisted.ensureDeferred
async def test_a_kept_home_keeps_its_uid_and_is_re_owned_only_after_a_collision(local):
    """Review C1: the user's account gets the same uid each time, so a kept home needs no
    re-owning; only when that uid was taken meanwhile does the next one get the home."""
    import secrets
    import subprocess

    from agent.platforms.local_accounts import uid_for
    from tests.support.xvnc_sessions import remove_account

    driver = await local.make()
    tpl = template(persistent_home=True,
                   local={"command": 'mkdir -p "$HOME/d"; touch "$HOME/d/$STREAMSPACE_SESSION_NAME";'
                                     " exec xterm"})
    await driver.start_session("k1", tpl, ALICE, "one")
    home = Path(driver.store.load("k1").home)
    await until(lambda: (home / "d" / "one").exists(), 5, what="the app writing to HOME")
    [account] = session_accounts(local.state)
    uid = pwd.getpwnam(account).pw_uid
    assert uid == uid_for(driver.accounts.tag, ALICE.id)
    await driver.stop_session("k1")
    assert session_accounts(local.state) == []

    # while alice has no session, someone else gets her uid: her next account moves on
    squatter = f"sst-{secrets.token_hex(4)}"
    subprocess.run(["/usr/sbin/useradd", "--no-create-home", "--no-log-init", "--user-group",
                    "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", "--uid", str(uid),
                    squatter], check=True, capture_output=True)
    try:
        await driver.start_session("k2", tpl, ALICE, "two")
        [account] = session_accounts(local.state)
        moved = pwd.getpwnam(account).pw_uid
        assert moved != uid and moved == pwd.getpwnam(account).pw_gid
        # the home was re-owned before the app ran: it could write there
        await until(lambda: (home / "d" / "two").exists(), 5, what="the app writing to HOME")
        assert {p.stat().st_uid for p in [home, *home.rglob("*")]} == {moved}
        await driver.stop_session("k2")
    finally:
        remove_account(squatter, uid)


@pytest_twisted.ensureDeferred
async def test_a_start_whose_clean_up_fails_still_ends_and_frees_everything(local, monkeypatch):
    """Review should-fix 4: a failure while a failed start cleans up must not leave a stop
    (or a second start) waiting for it forever, nor keep the account."""
    import errno

    driver = await local.make()

    def disk_fails(session_id):
        raise OSError(errno.EIO, "Input/output error")  # stands for a failing disk

    monkeypatch.setattr(driver.store, "discard_sandbox", disk_fails)
    start = driver.start_session("bad", template(local={"geometry": "huge"}), ALICE, "")
    stop = driver.stop_session("bad")  # arrives while it starts: waits for the start
    with pytest.raises(DriverError, match="not WIDTHxHEIGHT"):
        await start.addTimeout(20, reactor)
    await stop.addTimeout(20, reactor)
    assert driver.list_sessions() == [] and driver.store.load("bad") is None
    assert session_accounts(local.state) == []
    # and the same session id starts again
    monkeypatch.undo()
    await driver.start_session("bad", template(), ALICE, "")
    await driver.stop_session("bad")


@pytest_twisted.ensureDeferred
async def test_a_session_printing_without_end_fills_no_disk(local):
    """Review should-fix 5: output is read by the agent into a bounded log (at most two
    files of 1 MiB), and its end still makes the failure reason."""
    from agent.platforms.session_log import LIMIT

    driver = await local.make()
    await driver.start_session("chatty", template(local={"command": "yes 'no end in sight'"}),
                               ALICE, "")
    app = driver._sessions["chatty"].app
    logs = driver.store.run_dir("chatty")

    def on_disk() -> int:
        return sum(p.stat().st_size for p in logs.glob("app.log*"))

    await until(lambda: getattr(app, "received", 0) > 3 * LIMIT or on_disk() > 2 * LIMIT,
                30, interval=0.1, what="3 MiB of output")
    assert on_disk() <= 2 * LIMIT
    assert "no end in sight" in app.log_tail()
    await driver.stop_session("chatty")
    assert session_pids(local.state) == []


@pytest_twisted.ensureDeferred
async def test_process_scans_and_user_lookups_never_run_on_the_reactor(local, monkeypatch):
    """Review should-fix 6 and nit 11: whole-/proc scans and name-service lookups (which may
    go over the network) run on the local platform's threads during a session's life."""
    import threading

    from streamspace_common import procfs

    calls: list[tuple[str, bool]] = []
    recording = [True]
    for module, name in [(procfs, "pids"), (pwd, "getpwall"), (pwd, "getpwnam"),
                         (pwd, "getpwuid")]:
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            if recording[0]:
                calls.append((_name, threading.current_thread() is threading.main_thread()))
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    driver = await local.make()
    await driver.start_session("s1", template(), ALICE, "")
    await driver.hibernate_session("s1")
    await driver.wake_session("s1", template(), None)
    await driver.stop_session("s1")
    recording[0] = False
    assert {name for name, _ in calls} >= {"pids", "getpwall", "getpwnam"}
    assert [name for name, on_reactor in calls if on_reactor] == []


@pytest_twisted.ensureDeferred
async def test_what_a_killed_agent_left_in_trash_is_swept_at_start(local):
    """Review nit 5: deletes go through trash/; one a killed agent had not finished is done
    by the next start."""
    left = local.state / "trash" / "0123abcd" / "home"
    left.mkdir(parents=True)
    (left / "big-file").write_bytes(b"x" * 4096)
    await local.make()
    assert list((local.state / "trash").iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_a_missing_system_tool_fails_the_start_with_a_sentence(local, monkeypatch):
    from streamspace_common import procfs

    driver = await local.make()
    real_tool = procfs.tool

    def tool(name: str) -> str:
        if name == "setsid":  # as on a machine without util-linux's setsid
            raise procfs.MissingTool("setsid is not installed (Debian: util-linux)")
        return real_tool(name)

    monkeypatch.setattr(procfs, "tool", tool)
    with pytest.raises(DriverError, match=r"^the session could not be started: setsid is not "
                                          r"installed \(Debian: util-linux\)$"):
        await driver.start_session("s1", template(), ALICE, "")
    assert driver.list_sessions() == [] and session_accounts(local.state) == []
