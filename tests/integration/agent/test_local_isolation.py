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


@pytest_twisted.ensureDeferred
async def test_without_any_sandbox_a_non_root_agent_runs_no_session_unless_allowed(platform):
    """Review C2: a session without a sandbox runs as the agent's user and could read its
    token and impersonate it; that takes the operator's explicit opt-in."""
    iso = await sandbox.probe(reactor, bwrap="/nonexistent/bwrap", as_root=False)
    assert iso.refuse_all and not iso.isolated and iso.bwrap is None
    driver = await platform.make(isolation=iso)
    with pytest.raises(DriverError, match=r"cannot run sessions safely: bubblewrap \(bwrap\) is "
                                          r"not installed .*could read its token and "
                                          r"impersonate it.*LOCAL_ALLOW_UNSANDBOXED=true"):
        await driver.start_session("s1", xterm(), ALICE, "")
    assert session_pids(platform.agent_dir) == []
    allowed = await sandbox.probe(reactor, bwrap="/nonexistent/bwrap", as_root=False,
                                  allow_unsandboxed=True)
    assert not allowed.refuse_all and not allowed.isolated
    assert "can impersonate this agent" in allowed.problem


@pytest_twisted.ensureDeferred
async def test_state_directories_under_a_bound_system_directory_are_hidden(monkeypatch):
    """Review should-fix 3: the sandbox binds /opt whole; a control plane's state directory
    there (the agent's inside it, as `make run` lays them out) must not show in sessions."""
    import shutil
    import tempfile

    for key, value in SECRET_ENV.items():
        monkeypatch.setenv(key, value)
    base = Path(tempfile.mkdtemp(prefix="streamspace-test-", dir="/opt"))
    driver = None
    try:
        os.chmod(base, 0o755)
        cp = base / "state"
        cp.mkdir()
        os.chmod(cp, 0o711)  # as streamspace/tap.py leaves it: traversable
        read_or_create(cp / "jwt-secret")
        agent_dir = cp / "agent"
        agent_dir.mkdir(mode=0o700)
        driver = LocalDriver(reactor, agent_dir, Capacity(), stop_grace=2.0, hide=[str(cp)])
        await driver.start()
        assert driver.isolation.isolated, driver.isolation.problem
        checks = "\n".join(
            f'test -e "{p}" && echo "EXISTS {p}" || echo "ABSENT {p}"'
            for p in (cp / "jwt-secret", agent_dir, agent_dir / "sessions"))
        script = f"""
{checks}
echo "ENTRIES $(ls -A "{cp}" | wc -l)"
echo "FS $(stat -f -c %T "{cp}")"
ls "{base}" >/dev/null && echo "BASE visible"
"""
        await driver.start_session("opt-1", probe(script), ALICE, "")
        lines = (await wait_probe(driver, "opt-1")).splitlines()
        # the control plane's directory shows as an empty tmpfs: none of its files, and not
        # the agent's directory inside it (the sessions' own homes come in by their mounts)
        assert {f"ABSENT {cp / 'jwt-secret'}", f"ABSENT {agent_dir}",
                f"ABSENT {agent_dir / 'sessions'}", "ENTRIES 0", "FS tmpfs",
                "BASE visible"} <= set(lines), lines
    finally:
        if driver is not None:
            await driver.shutdown()
        kill_leftovers(base / "state" / "agent")
        shutil.rmtree(base, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_the_vnc_socket_is_dialled_only_if_it_is_the_sessions_own(platform, tmp_path):
    """Review nit 11: the session's account owns vnc/, so it could put a symlink (here to
    another RFB server) or a socket of its own where rfb.sock was; the agent, as root,
    must not follow it. The swap is made by the test as root: it stands for what the
    session's Xvnc, which runs as that account, can do."""
    from twisted.internet.error import ConnectError

    from tests.support.tcp_peers import PeerServer

    driver = await platform.make()
    await driver.start_session("s1", xterm(), ALICE, "")
    vnc = driver.vnc_socket("s1").parent
    decoy = PeerServer(greeting=b"RFB 003.008\n")
    decoy_port = reactor.listenUNIX(str(tmp_path / "decoy.sock"), decoy)
    try:
        os.rename(vnc / "rfb.sock", vnc / "real.sock")
        (vnc / "rfb.sock").symlink_to(tmp_path / "decoy.sock")
        with pytest.raises(ConnectError, match="is a symlink"):
            await (await driver.vnc_endpoint("s1")).connect(protocol.Factory.forProtocol(
                protocol.Protocol))
        (vnc / "rfb.sock").unlink()
        planted = reactor.listenUNIX(str(vnc / "rfb.sock"), decoy)  # a socket of root's
        with pytest.raises(ConnectError, match="owned by uid 0"):
            await (await driver.vnc_endpoint("s1")).connect(protocol.Factory.forProtocol(
                protocol.Protocol))
        await planted.stopListening()
        assert decoy.connections == []
        os.rename(vnc / "real.sock", vnc / "rfb.sock")
        await capture_through(await driver.vnc_endpoint("s1"), tmp_path / "screen.png")
    finally:
        await decoy_port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_sandboxed_display_is_marked_taken_on_the_host(platform):
    """Review nit 11: a sandboxed Xvnc's lock is in its private /tmp, so the agent puts a
    placeholder in the host's /tmp naming the live sandbox; a real X server started on the
    same display reads it and refuses, instead of dying on the abstract socket."""
    import subprocess

    driver = await platform.make()
    await driver.start_session("s1", xterm(), ALICE, "")
    record = driver.store.load("s1")
    lock = Path(f"/tmp/.X{record.display}-lock")
    assert lock.read_text() == f"{record.xvnc_pid:10d}\n"
    assert Path(f"/proc/{record.xvnc_pid}").exists()
    other = subprocess.run(["Xvnc", f":{record.display}", "-rfbport", "-1", "-nolisten", "tcp"],
                           capture_output=True, text=True, timeout=20)
    assert other.returncode != 0
    assert f"Server is already active for display {record.display}" in other.stderr
    await driver.stop_session("s1")
    assert not lock.exists()


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
    # the agent is not dumpable (review C2): another process of its uid cannot read its
    # environment, though it can read that of a process of the same uid that is
    as_agent_user = ["/usr/bin/setpriv", f"--reuid={who.uid}", f"--regid={who.gid}",
                     "--clear-groups", "cat"]
    denied = subprocess.run([*as_agent_user, f"/proc/{agent.pid}/environ"],
                            capture_output=True, text=True)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert subprocess.run([*as_agent_user, f"/proc/{xterm}/environ"],
                          capture_output=True).returncode == 0
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


def without_user_namespaces(who, argv: list[str]) -> list[str]:
    """`argv` as `who` in a user namespace that may make no other: bubblewrap cannot make
    a sandbox there, as in a container under Docker's default seccomp profile (review C2:
    the shipped agent image)."""
    return ["/usr/bin/setpriv", f"--reuid={who.uid}", f"--regid={who.gid}", "--clear-groups",
            "/usr/bin/bwrap", "--dev-bind", "/", "/", "--unshare-user", "--disable-userns",
            "--die-with-parent", "--", *argv]


def python_for_everyone() -> tuple[str, str]:
    """An interpreter any user can start from inside a user namespace, and the PYTHONPATH
    it needs for the suite's packages: the suite's own when every directory above it may
    be entered by anyone, else the system's python3 of the same version (a venv made
    from an interpreter under /root, as with pyenv, cannot be started there)."""
    import stat
    import sys
    import sysconfig

    real = Path(sys.executable).resolve()
    if all(p.stat().st_mode & stat.S_IXOTH for p in real.parents):
        return sys.executable, ""
    system = "/usr/bin/python3"
    import subprocess

    version = subprocess.run([system, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == str(sys.version_info[:2]), f"{system} is {version}: install python3"
    return system, sysconfig.get_paths()["purelib"]


@pytest_twisted.ensureDeferred
async def test_an_agent_without_any_sandbox_runs_sessions_only_when_allowed_and_guards_itself(
        control_plane, unprivileged_agent_user, processes, tmp_path):
    """Review C2, end to end with a real `twistd agent` that cannot sandbox: no session runs
    unless LOCAL_ALLOW_UNSANDBOXED=true, and the reason says so; allowed, a session cannot
    read the agent's /proc environment (not dumpable), and what it left running after it
    escaped its process group and dropped its markers is killed when it stops (the agent
    is its subreaper)."""
    import subprocess

    from streamspace_common import procfs
    from tests.integration.agent.test_agent_sessions import REPO, TWISTD, agent_env

    who = unprivileged_agent_user
    os_env = agent_env(control_plane, who.state)
    os.chown(who.state.parent / "token", who.uid, who.gid)
    python, site = python_for_everyone()
    if site:
        os_env["PYTHONPATH"] = f"{os_env['PYTHONPATH']}:{site}"
    argv = without_user_namespaces(who, [python, TWISTD, "--nodaemon", "--pidfile=",
                                         "--logger=streamspace_common.logs.observer", "agent"])
    log = tmp_path / "agent.log"

    def start(env: dict[str, str]) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, env=env, cwd=str(REPO), stdout=out,
                                    stderr=subprocess.STDOUT)
        processes.append(proc)
        return proc

    async def stop(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGTERM)
        await until(lambda: proc.poll() is not None, 20, what="twistd exiting")

    # 1. Not allowed: the agent says why at start, and a start fails with the reason.
    first = start(os_env)
    await control_plane.wait_connected(timeout=30)
    assert "bubblewrap cannot create a sandbox here" in log.read_text()
    refused = await control_plane.outcome(control_plane.command(
        "start_session", "s-refused", {"template": TEMPLATE, "user": USER, "name": ""}), 30)
    assert refused["type"] == "failed"
    assert "could read its token and impersonate it" in refused["payload"]["reason"]
    assert "LOCAL_ALLOW_UNSANDBOXED=true" in refused["payload"]["reason"]
    assert session_pids(who.state) == []
    await stop(first)
    await until(lambda: control_plane.control is None, 10, what="the hub noticing")

    # 2. Allowed by the operator: sessions run, unsandboxed, as the agent's user.
    second = start({**os_env, "LOCAL_ALLOW_UNSANDBOXED": "true"})
    await until(lambda: len(control_plane.of_type("register")) == 2, 30, what="re-register")
    await control_plane.wait_connected()
    assert "can impersonate this agent" in log.read_text()
    script = """
agent=$(awk '/^PPid:/ {print $2}' /proc/$PPID/status)
tr '\\0' ' ' < /proc/$agent/cmdline | grep -q twistd && echo "AGENT is the parent"
cat /proc/$agent/environ >/dev/null 2>&1 && echo "READ agent environ" || echo "DENIED agent environ"
cat /proc/self/environ >/dev/null 2>&1 && echo "READ own environ"
setsid sh -c 'exec env -i sleep 600' </dev/null >/dev/null 2>&1 &
echo "ESCAPED $!"
"""
    template = {"name": "probe", "cpu": 0, "memory_mb": 0, "persistent_home": False,
                "env": {"PROBE": script},
                "platforms": {"local": {"command": probe(script).platform("local")["command"]}}}
    started = await control_plane.outcome(control_plane.command(
        "start_session", "s-probe", {"template": template, "user": USER, "name": ""}), 30)
    assert started["type"] == "complete", started
    home = who.state / "homes" / "sessions" / "s-probe"
    await until(lambda: (home / "probe.done").exists(), 20, what="the probe to finish")
    lines = (home / "probe.out").read_text().splitlines()
    assert {"AGENT is the parent", "DENIED agent environ", "READ own environ"} <= set(lines)
    [escaped] = [int(x.split()[1]) for x in lines if x.startswith("ESCAPED ")]
    await until(lambda: procfs.cmdline(escaped) == ["sleep", "600"], 10,
                what="the escaped process to exec")
    assert procfs.environ(escaped) == {}
    assert procfs.uid_of(escaped) == who.uid  # unsandboxed: the agent's own user

    stopped = await control_plane.outcome(control_plane.command("stop_session", "s-probe",
                                                                {}), 30)
    assert stopped["type"] == "complete"
    # killed at the stop, and its exit status collected by the agent: no zombie left
    await until(lambda: procfs.state_of(escaped) is None, 15, what="the escaped process gone")
    assert session_pids(who.state) == []
    await stop(second)
    text = log.read_text()
    assert "killed 1 process(es) left by sessions that ended" in text
    assert "Traceback" not in text and "Unhandled error" not in text, text[-3000:]
