"""How the local driver starts a session's two processes (Xvnc, then the application).

With a sandbox (see sandbox.py) both run in bubblewrap as the session's account, each in
its own sandbox; they share the session's private /tmp (the X socket) and the X cookie, and
only Xvnc's sandbox holds the VNC socket directory. Without one (an agent that is not root
and has no working bwrap: one user at a time), they run as the agent's own user on the
host's /tmp, with the same credentials on the X display and the VNC socket.

Either way each process leads its own process group (procgroup.py), carries the session's
markers in its environment, and gets nothing else of the agent's environment.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.platforms import blocking, procgroup, sandbox, xvnc
from agent.platforms.local_accounts import Account
from agent.platforms.local_store import SandboxPaths

SESSION_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
_VNC_DIR_FD = 3  # without a sandbox, Xvnc gets the socket directory as this descriptor


@dataclass
class SessionLaunch:
    """What one (re)start of a session runs with."""

    session_id: str
    display: int
    paths: SandboxPaths
    home: str  # on the host
    account: Account | None
    markers: Mapping[str, str]
    run_dir: Path
    vnc_dir_fd: int  # the agent's descriptor of paths.vnc (the socket's only way in)


class ProcessLauncher:
    def __init__(self, reactor, bwrap: str | None, hidden: tuple[str, ...] = ()) -> None:
        self.reactor = reactor
        self.bwrap = bwrap
        self.hidden = hidden  # paths a sandbox must not show (see sandbox.hidden_under)

    @property
    def sandboxed(self) -> bool:
        return self.bwrap is not None

    def home_inside(self, launch: SessionLaunch) -> str:
        if not self.sandboxed:
            return launch.home
        return launch.account.home if launch.account else "/home/streamspace"

    def xvnc(self, launch: SessionLaunch, geometry: str, desktop: str
             ) -> procgroup.GroupProcess:
        if self.sandboxed:
            rfb, auth = f"{sandbox.RUN_DIR}/vnc/{xvnc.RFB_SOCKET}", f"{sandbox.RUN_DIR}/Xauthority"
        else:
            rfb = f"/proc/self/fd/{_VNC_DIR_FD}/{xvnc.RFB_SOCKET}"
            auth = str(launch.paths.xauthority)
        argv = xvnc.xvnc_argv(launch.display, rfb, auth, geometry, desktop=desktop)
        env = {"PATH": self._path(), "HOME": "/tmp" if self.sandboxed else str(launch.run_dir),
               **launch.markers}
        return self._spawn(launch, "xvnc", argv, env, cwd="/",
                           binds=[(str(launch.paths.vnc), f"{sandbox.RUN_DIR}/vnc")],
                           log=launch.run_dir / "xvnc.log",
                           extra_fds={_VNC_DIR_FD: launch.vnc_dir_fd})

    def app(self, launch: SessionLaunch, command: str, template_env: Mapping[str, str],
            username: str, name: str) -> procgroup.GroupProcess:
        home = self.home_inside(launch)
        env = {"PATH": self._path(), "LANG": os.environ.get("LANG", "C.UTF-8")}
        user = launch.account.name if launch.account else os.environ.get("USER", "")
        if user:
            env["USER"] = env["LOGNAME"] = user
        env["SHELL"] = "/bin/bash" if shutil.which("bash") else "/bin/sh"
        env.update(template_env)
        auth = (f"{sandbox.RUN_DIR}/Xauthority" if self.sandboxed
                else str(launch.paths.xauthority))
        env.update({"HOME": home, "DISPLAY": f":{launch.display}", "XAUTHORITY": auth,
                    "STREAMSPACE_USER": username, "STREAMSPACE_SESSION_NAME": name,
                    **launch.markers})
        return self._spawn(launch, "app", ["/bin/sh", "-c", command], env, cwd=home,
                           binds=[(launch.home, home)], log=launch.run_dir / "app.log")

    def _path(self) -> str:
        return SESSION_PATH if self.sandboxed else xvnc.default_path()

    def _spawn(self, launch: SessionLaunch, name: str, argv: list[str], env: dict[str, str],
               cwd: str, binds: list[tuple[str, str]], log: Path,
               extra_fds: dict[int, int] | None = None) -> procgroup.GroupProcess:
        if not self.sandboxed:
            return procgroup.spawn_in_group(self.reactor, name, argv, env, cwd, log,
                                            extra_fds=extra_fds)
        assert self.bwrap is not None
        run_as = (launch.account.uid, launch.account.gid) if launch.account else None
        args, tail = sandbox.sandbox_args(
            binds=binds, ro_binds=[(str(launch.paths.xauthority),
                                    f"{sandbox.RUN_DIR}/Xauthority")],
            env=env, cwd=cwd, command=argv, run_as=run_as, unprivileged=run_as is None,
            private_tmp=str(launch.paths.tmp), hidden=self.hidden)
        args_fd = sandbox.args_pipe(args)
        try:
            # bwrap itself gets only the markers: the agent finds the sandbox by them
            proc = procgroup.spawn_in_group(
                self.reactor, name, [self.bwrap, "--args", "3", *tail],
                {"PATH": "/usr/bin:/bin", **launch.markers}, "/", log, extra_fds={3: args_fd})
        finally:
            os.close(args_fd)
        proc.polite_stop = lambda: (blocking.run(self.reactor, sandbox.ask_to_stop, proc.pid)
                                    if proc.pid else None)
        proc.signal_in_status = True
        return proc
