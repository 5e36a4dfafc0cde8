"""streamspace_common.procfs against real processes: a child we start and ourselves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import pytest_twisted

from streamspace_common import procfs
from tests.support.polling import until


@pytest.fixture
def child():
    """A sh that starts a sleep and waits for it: a parent with a child of its own."""
    proc = subprocess.Popen(["/bin/sh", "-c", "sleep 600 & wait"],
                            env={"PATH": "/usr/bin:/bin", "PROCFS_MARK": "a=b c"})
    yield proc
    for pid in procfs.descendants(proc.pid):
        os.kill(pid, 9)
    proc.kill()
    proc.wait(10)


@pytest_twisted.ensureDeferred
async def test_readers_see_a_real_process_tree(child):
    [sleeper] = await until(lambda: procfs.children(child.pid), 10, what="the sleep child")
    assert procfs.cmdline(child.pid) == ["/bin/sh", "-c", "sleep 600 & wait"]
    assert procfs.environ(child.pid) == {"PATH": "/usr/bin:/bin", "PROCFS_MARK": "a=b c"}
    assert procfs.uid_of(child.pid) == os.getuid()
    assert procfs.state_of(sleeper) in ("S", "R")
    assert child.pid in procfs.children(os.getpid())
    assert {child.pid, sleeper} <= set(procfs.descendants(os.getpid()))
    assert procfs.descendants(child.pid) == [sleeper]
    assert child.pid in procfs.pids() and sleeper in procfs.pids()
    assert procfs.pid_namespace(child.pid) == procfs.pid_namespace(os.getpid()) is not None


def test_a_process_that_is_gone_reads_as_nothing():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    gone = proc.pid
    assert procfs.cmdline(gone) == [] and procfs.environ(gone) is None
    assert procfs.uid_of(gone) is None and procfs.state_of(gone) is None
    assert procfs.children(gone) == [] and procfs.pid_namespace(gone) is None


def test_tools_are_found_on_the_system_path_only(monkeypatch, tmp_path):
    fake = tmp_path / "setsid"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert procfs.tool("setsid") in ("/usr/bin/setsid", "/bin/setsid")
    with pytest.raises(procfs.MissingTool, match=r"bwrap-nonexistent is not installed$"):
        procfs.tool("bwrap-nonexistent")
    monkeypatch.setattr(procfs, "SYSTEM_PATH", str(tmp_path / "empty"))
    with pytest.raises(procfs.MissingTool, match=r"\(Debian: bubblewrap\)"):
        procfs.tool("bwrap")
