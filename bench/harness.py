"""What the VNC benchmarks share: the product's processes on loopback (a real
`twistd streamspace` with its embedded PostgreSQL, the product's agent code with a driver
whose one session's VNC server is a TCP address we choose), websockify as the reference,
API calls, process RSS and descriptors, and py-spy profiles of both our processes.

Set-up code here runs before the reactor does (plain blocking calls and polling).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ADMIN_PASSWORD = "bench-admin-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)  # harness set-up polling, before the reactor runs
    raise SystemExit(f"bench: timed out waiting for {what}")


def api(base, method, path, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def median(values):
    return round(statistics.median(values), 3) if values else None


def _cpu_seconds(pid: int, children: bool = True) -> float:
    """CPU of a process: its threads (nanoseconds, from schedstat) and, with `children`,
    its reaped children (clock ticks) and, recursively, its live children."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    total = sum(int(x) for x in fields[13:15]) / os.sysconf("SC_CLK_TCK") if children else 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e9
            if not children:
                continue
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        total += sum(_cpu_seconds(c) for c in children)
    return total


def process_usage(pid: int, children: bool = True) -> dict:
    """RSS (from /proc, bytes), open descriptors and CPU seconds of one process (with its
    children unless told not to: websockify serves each connection in a child)."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return {"rss_bytes": rss, "open_fds": len(os.listdir(f"/proc/{pid}/fd")),
            "cpu_seconds": _cpu_seconds(pid, children)}


@dataclass
class Product:
    """One running StreamSpace: its control plane, agent and one running session."""

    name: str
    base: str
    ws_base: str
    token: str
    session_id: str
    cp_pid: int
    agent_pid: int

    def pids(self) -> dict[str, int]:
        return {"control_plane": self.cp_pid, "agent": self.agent_pid}


class Harness:
    """Starts what a benchmark needs; `close()` stops all of it."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="streamspace-bench-"))
        os.chmod(self.tmp, 0o755)

    def spawn(self, name: str, argv, env=None, repo: Path = REPO, pass_fds=()
              ) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(repo), **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT, cwd=str(repo),
                                pass_fds=pass_fds)
        self.procs[name] = proc
        return proc

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def close(self) -> None:
        for p in reversed(list(self.procs.values())):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(list(self.procs.values())):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- what the benchmarks start ---------------------------------------------------

    def start_tcp_target(self) -> int:
        port = free_port()
        self.spawn("target", [sys.executable, str(REPO / "bench" / "tcp_target.py"), str(port)])
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close()
                   is None, what="the TCP target")
        return port

    def start_product(self, vnc_port: int, name: str = "streamspace", repo: Path = REPO,
                      env: dict | None = None) -> Product:
        """A control plane (from the checkout `repo`), then an agent whose one session's VNC
        server is `vnc_port`, then that session, running."""
        cp = free_port()
        base = f"http://127.0.0.1:{cp}"
        control = self.spawn(f"{name}-control-plane", [
            str(BIN / "twistd"), "--nodaemon", "--pidfile=", "streamspace", "--port", str(cp),
            "--interface", "127.0.0.1"], repo=repo,
            env={"STREAMSPACE_STATE_DIR": str(self.tmp / f"{name}-cp"),
                 "ADMIN_PASSWORD": ADMIN_PASSWORD, "LOG_LEVEL": "warn", **(env or {})})
        wait_until(lambda: urllib.request.urlopen(base + "/ready", timeout=2).status == 200,
                   what=f"the control plane of {name}")
        token = api(base, "POST", "/api/v1/auth/login",
                    {"username": "admin", "password": ADMIN_PASSWORD})["token"]
        agent_token = api(base, "POST", "/api/v1/agents",
                          {"agent_id": "bench", "platform": "local"}, token)["token"]
        agent = self.spawn(f"{name}-agent", [
            sys.executable, str(repo / "bench" / "bench_agent.py"), base, "bench", agent_token,
            str(vnc_port), str(self.tmp / f"{name}-agent")], repo=repo,
            env={"LOG_LEVEL": "warn"})
        wait_until(lambda: api(base, "GET", "/api/v1/agents/bench", token=token)["status"]
                   == "online", what=f"the agent of {name}")
        session = api(base, "POST", "/api/v1/sessions", {"template": "terminal"}, token)
        wait_until(lambda: api(base, "GET", f"/api/v1/sessions/{session['id']}",
                               token=token)["state"] == "running", what=f"{name}'s session")
        return Product(name, base, f"ws://127.0.0.1:{cp}", token, session["id"], control.pid,
                       agent.pid)

    def start_websockify(self, target_port: int) -> int:
        port = free_port()
        self.spawn("websockify", [str(BIN / "websockify"), f"127.0.0.1:{port}",
                                  f"127.0.0.1:{target_port}"])
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close()
                   is None, what="websockify")
        return port

    # -- profiles ----------------------------------------------------------------------

    def start_profiles(self, product: Product, out_dir: Path, seconds: int
                       ) -> list[subprocess.Popen]:
        """py-spy on the product's control plane and agent for `seconds` (collapsed stacks,
        summarised by `profile_summary`)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        spy = BIN / "py-spy"
        if not spy.exists():
            raise SystemExit("bench: --profile needs py-spy (.venv/bin/pip install py-spy)")
        return [subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250",
             "--format", "raw", "--output", str(out_dir / f"{name}.txt"), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in product.pids().items()]


async def vnc_url(product: Product) -> str:
    """A fresh single-use viewer URL for the product's session (asks its API with treq)."""
    import treq

    r = await treq.post(f"{product.base}/api/v1/sessions/{product.session_id}/vnc-token",
                        headers={"Authorization": f"Bearer {product.token}"})
    body = json.loads(await r.content())
    return product.ws_base + body["url"]


def profile_summary(path: Path, top: int = 15) -> list[tuple[str, float]]:
    """Self time by function from a py-spy `raw` (collapsed stacks) file: (frame, share)."""
    selfs: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        selfs[leaf] = selfs.get(leaf, 0) + n
    ranked = sorted(selfs.items(), key=lambda kv: -kv[1])[:top]
    return [(frame, round(n / total, 3)) for frame, n in ranked] if total else []


def run_and_print(work) -> None:
    """Run the coroutine `work()` under the reactor and print what it returns as JSON."""
    from twisted.internet import defer, reactor

    outcome: dict = {}

    async def go():
        try:
            outcome["result"] = await work()
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(go()))
    reactor.run()
    print(json.dumps(outcome.get("result", {"error": "benchmark failed"}), indent=2))
