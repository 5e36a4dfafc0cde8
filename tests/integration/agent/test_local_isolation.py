"""Local sessions are isolated from the platform and from each other (issue 9, items 1, 2,
11, 17): real bubblewrap, real accounts, real Xvnc, and commands run inside a real session
through its application command, as a plain user's session would run them.

The state directories are laid out as `make run` lays them out (the control plane's, with
the agent's inside it), with the secrets written by the control plane's own code; the
agent's environment holds the secrets an operator would set.
"""

from __future__ import annotations

import os
import pwd
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from agent.journal import CommandJournal
from agent.platforms import sandbox
from agent.platforms.base import Capacity, DriverError, SessionTemplate, UserRef
from agent.platforms.local import LocalDriver
from agent.platforms.procgroup import pids_of_uid
from streamspace.secrets_store import read_or_create, write_private
from tests.integration.agent.test_agent_sessions import SID, TEMPLATE, USER, start_twistd
from tests.support.polling import until
from tests.support.xvnc_sessions import (
    capture_through,
    distinct_colours,
    inner_pids,
    kill_leftovers,
    remove_account,
    session_accounts,
    session_pids,
    uid_of,
)

pytestmark = pytest.mark.slow

ALICE = UserRef("u-alice", "alice")
BOB = UserRef("u-bob", "bob")
SECRET_ENV = {"JWT_SECRET": "jwt-secret-value-" + "j" * 20,
              "ADMIN_PASSWORD": "admin-password-value-x",
              "DB_PASSWORD": "db-password-value-y",
              "AGENT_TOKEN": "agent-token-value-z",
              "DATABASE_URL": "postgresql://streamspace:db-password-value-y@127.0.0.1/db"}


def xterm(**changes) -> SessionTemplate:
    data = {"name": "xterm", "cpu": 0, "memory_mb": 0, "env": {}, "persistent_home": False,
            "platforms": {"local": {"command": "exec xterm"}}}
    data.update(changes)
    return SessionTemplate.from_json(data)


def probe(script: str) -> SessionTemplate:
    """A session whose application runs `script` (output in $HOME/probe.out), then waits."""
    command = ('sh -c "$PROBE" > "$HOME/probe.out" 2>&1; touch "$HOME/probe.done"; '
               "exec sleep 600")
    return xterm(name="probe", env={"PROBE": script},
                 platforms={"local": {"command": command}})


@pytest.fixture
def platform(tmp_path, monkeypatch):
    """A control plane's state directory as `make run` makes it, its agent's inside."""
    for key, value in SECRET_ENV.items():
        monkeypatch.setenv(key, value)
    cp = tmp_path / "state"
    cp.mkdir()
    os.chmod(cp, 0o711)  # as streamspace/tap.py leaves it (PostgreSQL must traverse it)
    read_or_create(cp / "jwt-secret")
    write_private(cp / "admin-credentials", "username: admin\npassword: hunter2-admin\n")
    write_private(cp / "local-agent.token", "local-agent-token\n")
    write_private(cp / "postgres.password", "postgres-password\n")
    agent_dir = cp / "agent"
    agent_dir.mkdir(mode=0o700)
    journal = CommandJournal(agent_dir / "commands.jsonl")
    journal.started("c-1", "start_session")
    journal.close()
    drivers: list[LocalDriver] = []

    async def make(**kw) -> LocalDriver:
        driver = LocalDriver(reactor, agent_dir, Capacity(), stop_grace=2.0, **kw)
        await driver.start()
        drivers.append(driver)
        return driver

    secrets = [cp / "jwt-secret", cp / "admin-credentials", cp / "local-agent.token",
               cp / "postgres.password", agent_dir / "commands.jsonl"]
    yield SimpleNamespace(make=make, cp=cp, agent_dir=agent_dir, secrets=secrets)
    for driver in drivers:
        pytest_twisted.blockon(driver.shutdown())
    accounts = session_accounts(agent_dir)
    leaked = kill_leftovers(agent_dir)
    assert not leaked and not accounts, f"left behind: {leaked} {accounts}"


def tcp_listeners_of(pid: int) -> list[str]:
    """TCP sockets in LISTEN state that process `pid` holds (by socket inode)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1])
    return found


async def wait_probe(driver: LocalDriver, session_id: str) -> str:
    home = Path(driver.store.load(session_id).home)
    await until(lambda: (home / "probe.done").exists(), 20, what="the probe to finish")
    return (home / "probe.out").read_text()


@pytest_twisted.ensureDeferred
async def test_a_plain_users_session_reaches_no_secret_and_no_other_session(platform):
    driver = await platform.make()
    assert driver.isolation.isolated, driver.isolation.problem
    await driver.start_session("alice-1", xterm(), ALICE, "")
    alice = driver.store.load("alice-1")
    alice_socket = driver.vnc_socket("alice-1")
    [alice_xterm] = await until(lambda: inner_pids(platform.agent_dir, "alice-1", "xterm"),
                                5, what="alice's xterm")
    reads = "\n".join(f'cat "{p}" >/dev/null 2>&1 && echo "READ {p}" || echo "DENIED {p}"'
                      for p in [*platform.secrets, "/etc/shadow", "/proc/1/environ",
                                f"/proc/{os.getpid()}/environ", alice.home])
    script = f"""
echo "UID $(id -u) $(id -un)"
{reads}
ls "{platform.cp}" >/dev/null 2>&1 && echo "LISTED state" || echo "UNLISTED state"
echo "PROCS $(ls /proc | grep -c '^[0-9]')"
cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -q -e '-m py[t]est' && echo "SEES agent"
env | sed 's/^/ENV /'
xdpyinfo >/dev/null 2>&1 && echo "OWN X ok" || echo "OWN X refused"
xdpyinfo -display :{alice.display} >/dev/null 2>&1 && echo "OTHER X ok" || echo "OTHER X refused"
xwininfo -root -tree -display :{alice.display} >/dev/null 2>&1 && echo "OTHER TREE ok" \
  || echo "OTHER TREE refused"
XAUTHORITY=/nonexistent xdpyinfo -display :{alice.display} >/dev/null 2>&1 \
  && echo "OTHER X noauth ok" || echo "OTHER X noauth refused"
python3 -c "import socket; s = socket.socket(socket.AF_UNIX); s.connect('{alice_socket}')" \
  >/dev/null 2>&1 && echo "OTHER VNC ok" || echo "OTHER VNC refused"
"""
    await driver.start_session("bob-1", probe(script), BOB, "")
    out = await wait_probe(driver, "bob-1")
    lines = out.splitlines()

    # id is neither root nor the service's user, and not alice's account
    [uid_line] = [line for line in lines if line.startswith("UID ")]
    uid, name = int(uid_line.split()[1]), uid_line.split()[2]
    assert uid not in (0, os.getuid()), out
    assert name in session_accounts(platform.agent_dir)
    assert uid != uid_of(alice_xterm)
    # every secret of the control plane and of the agent is out of reach, and so is the
    # other user's home and every process outside the sandbox
    for path in [*platform.secrets, "/etc/shadow", "/proc/1/environ",
                 f"/proc/{os.getpid()}/environ", alice.home]:
        assert f"DENIED {path}" in lines, out
    assert "UNLISTED state" in lines and "SEES agent" not in lines, out
    assert int(next(x for x in lines if x.startswith("PROCS ")).split()[1]) < 10, out
    # the environment holds no secret of the agent's
    env = "\n".join(x for x in lines if x.startswith("ENV "))
    for key, value in SECRET_ENV.items():
        assert f"ENV {key}=" not in env and value not in env, env
    # its own display works (so the refusals below are real): the other one refuses it,
    # and so does the other session's VNC server
    assert "OWN X ok" in lines, out
    assert {"OTHER X refused", "OTHER TREE refused", "OTHER X noauth refused",
            "OTHER VNC refused"} <= set(lines), out
    # alice's Xvnc listens on no TCP port at all, only on its Unix socket
    [alice_xvnc] = inner_pids(platform.agent_dir, "alice-1", "Xvnc")
    assert tcp_listeners_of(alice_xvnc) == []
    assert alice_socket.stat().st_mode & 0o077 == 0


@pytest_twisted.ensureDeferred
async def test_six_aborted_vnc_connections_then_a_viewer_gets_in(platform, tmp_path):
    """TigerVNC's blacklist would lock the agent's address out after five aborted
    connections (item 11)."""
    driver = await platform.make()
    await driver.start_session("s1", xterm(), ALICE, "")

    class Abort(protocol.Protocol):
        def __init__(self):
            self.closed = defer.Deferred()

        def dataReceived(self, data):
            self.transport.abortConnection()  # after the banner, before authenticating

        def connectionLost(self, reason):
            self.closed.callback(None)

    for _ in range(6):
        endpoint = await driver.vnc_endpoint("s1")
        proto = await endpoint.connect(protocol.Factory.forProtocol(Abort))
        await proto.closed.addTimeout(5, reactor)
    # a real VNC client completes the handshake and gets the screen
    await capture_through(await driver.vnc_endpoint("s1"), tmp_path / "screen.png")
    assert distinct_colours(tmp_path / "screen.png") >= 1


@pytest_twisted.ensureDeferred
async def test_chromium_keeps_its_own_sandbox_inside_ours(platform, tmp_path):
    import json
    import shlex

    catalog = json.loads((Path(__file__).resolve().parents[3] / "catalog" /
                          "templates.json").read_text())
    [tpl] = [t for t in catalog["templates"] if t["name"] == "chromium-browser"]
    assert "--no-sandbox" not in tpl["platforms"]["local"]["command"]
    assert shlex.split(tpl["platforms"]["local"]["command"])[0] == "chromium"
    driver = await platform.make()
    await driver.start_session("web", SessionTemplate.from_json(tpl), ALICE, "")

    [account] = session_accounts(platform.agent_dir)
    uid = pwd.getpwnam(account).pw_uid

    def sandboxed_renderers() -> list[int]:
        # by uid: chromium's zygote starts renderers with an environment of its own
        found = []
        for pid in pids_of_uid(uid):
            try:
                if (b"--type=renderer" in Path(f"/proc/{pid}/cmdline").read_bytes()
                        and "Seccomp:\t2" in Path(f"/proc/{pid}/status").read_text()):
                    found.append(pid)
            except OSError:
                continue
        return found

    # chromium's renderers run under its seccomp-bpf sandbox (a renderer applies it a
    # moment after it forks): chromium needs no --no-sandbox inside ours
    await until(sandboxed_renderers, 30, what="a chromium renderer in its own sandbox")


@pytest_twisted.ensureDeferred
async def test_without_a_sandbox_a_root_agent_runs_no_session_and_says_why(platform):
    iso = await sandbox.probe(reactor, bwrap="/nonexistent/bwrap")
    assert iso.refuse_all and not iso.isolated
    driver = await platform.make(isolation=iso)
    with pytest.raises(DriverError, match=r"cannot run sessions safely: bubblewrap \(bwrap\) "
                                          r"is not installed"):
        await driver.start_session("s1", xterm(), ALICE, "")
    assert session_pids(platform.agent_dir) == []
    assert session_accounts(platform.agent_dir) == []


@pytest.fixture
def processes():
    procs: list = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest_twisted.ensureDeferred
async def test_display_files_of_an_agent_killed_mid_start_are_cleaned_on_its_next_start(
        control_plane, state, processes, tmp_path):
    """Item 17: a real `twistd agent` is SIGKILLed as soon as its session's Xvnc holds a
    display lock (while it starts, or just after); the lock and X socket it leaves are in
    the session's private /tmp, which the next start removes."""
    log = tmp_path / "agent.log"
    first = start_twistd(control_plane, state, log)
    processes.append(first)
    await control_plane.wait_connected(timeout=30)
    control_plane.command("start_session", SID, {"template": TEMPLATE, "user": USER,
                                                 "name": ""})
    tmp = state / "sessions" / SID / "sandbox" / "tmp"
    [lock] = await until(lambda: list(tmp.glob(".X*-lock")), 20, interval=0.002,
                         what="Xvnc's display lock")
    first.send_signal(signal.SIGKILL)
    await until(lambda: first.poll() is not None, 10, what="the agent dead")
    # the sandboxes died with the agent and left the display's files behind
    await until(lambda: session_pids(state) == [], 10, what="the sandboxes dying with it")
    assert lock.exists() and list((tmp / ".X11-unix").iterdir())
    await until(lambda: control_plane.control is None, 10, what="the hub noticing")

    second = start_twistd(control_plane, state, log)
    processes.append(second)
    await until(lambda: len(control_plane.of_type("register")) == 2, 30, what="re-register")
    assert not tmp.exists() and not lock.exists()
    assert session_accounts(state) == []  # the killed agent's account went too
    second.send_signal(signal.SIGTERM)
    await until(lambda: second.poll() is not None, 20, what="twistd exiting")


@pytest.fixture
def unprivileged_agent_user():
    """An unprivileged Unix user to run a real `twistd agent` as (an operator running the
    agent as themselves), with a state directory of its own; removed afterwards with
    everything that ran as it."""
    import secrets
    import shutil
    import subprocess
    import tempfile

    name = f"sst-{secrets.token_hex(4)}"
    subprocess.run(["/usr/sbin/useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "--user-group", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0",
                    name], check=True, capture_output=True)
    entry = pwd.getpwnam(name)
    base = Path(tempfile.mkdtemp(prefix="ss-nonroot-"))
    os.chmod(base, 0o755)
    state = base / "agent"
    state.mkdir()
    os.chown(state, entry.pw_uid, entry.pw_gid)
    try:
        yield SimpleNamespace(name=name, uid=entry.pw_uid, gid=entry.pw_gid, state=state)
    finally:
        kill_leftovers(state)
        remove_account(name, entry.pw_uid)
        shutil.rmtree(base, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_an_agent_that_is_not_root_runs_sessions_of_one_user_and_says_why(
        control_plane, unprivileged_agent_user, processes, tmp_path):
    import subprocess

    from tests.integration.agent.test_agent_sessions import REPO, TWISTD, agent_env

    who = unprivileged_agent_user
    env = agent_env(control_plane, who.state)
    os.chown(who.state.parent / "token", who.uid, who.gid)
    log = tmp_path / "agent.log"
    with open(log, "ab") as out:
        agent = subprocess.Popen(
            ["/usr/bin/setpriv", f"--reuid={who.uid}", f"--regid={who.gid}", "--clear-groups",
             TWISTD, "--nodaemon", "--pidfile=", "--logger=streamspace_common.logs.observer",
             "agent"], env=env, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT)
    processes.append(agent)
    await control_plane.wait_connected(timeout=30)
    # the warning at start-up says why sessions are not isolated
    assert "runs sessions of one user at a time" in log.read_text()
    assert "does not run as root" in log.read_text()

    alice = {"id": "u-alice", "username": "alice"}
    first = control_plane.command("start_session", "s-alice",
                                  {"template": TEMPLATE, "user": alice, "name": ""})
    assert (await control_plane.outcome(first, 30))["type"] == "complete"
    # it runs as the agent's own user (never root), in an unprivileged sandbox
    [xterm] = await until(lambda: inner_pids(who.state, "s-alice", "xterm"), 10,
                          what="alice's xterm")
    assert uid_of(xterm) == who.uid
    assert os.readlink(f"/proc/{xterm}/ns/pid") != os.readlink("/proc/self/ns/pid")
    # a second user is refused, with the reason, and nothing of theirs starts
    bob = {"id": "u-bob", "username": "bob"}
    second = control_plane.command("start_session", "s-bob",
                                   {"template": TEMPLATE, "user": bob, "name": ""})
    refused = await control_plane.outcome(second, 30)
    assert refused["type"] == "failed"
    assert "already runs sessions of another user" in refused["payload"]["reason"]
    assert "does not run as root" in refused["payload"]["reason"]
    assert session_pids(who.state, "s-bob") == []
    # once alice's session has ended, bob's may run
    stop = control_plane.command("stop_session", "s-alice", {})
    assert (await control_plane.outcome(stop, 30))["type"] == "complete"
    third = control_plane.command("start_session", "s-bob",
                                  {"template": TEMPLATE, "user": bob, "name": ""})
    assert (await control_plane.outcome(third, 30))["type"] == "complete"
    agent.send_signal(signal.SIGTERM)
    await until(lambda: agent.poll() is not None, 20, what="twistd exiting")
    assert session_pids(who.state) == []
