"""One agent per state directory (issue 9 item 5): a second one is refused, naming the
directory and the holder's pid; the lock dies with its holder and is never inherited."""

import os
import subprocess
import sys

import pytest

from agent import tap
from agent.state_lock import StateDirLock, StateDirLocked
from tests.unit.agent.test_tap import options


def test_a_second_holder_is_refused_with_the_directory_and_pid(tmp_path):
    first = StateDirLock(tmp_path / "state").acquire()
    with pytest.raises(StateDirLocked) as refused:
        StateDirLock(tmp_path / "state").acquire()  # flock: also within one process
    text = str(refused.value)
    assert f"state directory {tmp_path / 'state'} is in use by another agent" in text
    assert f"(pid {os.getpid()})" in text and "AGENT_STATE_DIR" in text
    first.release()
    StateDirLock(tmp_path / "state").acquire().release()  # free again once released


def test_session_processes_do_not_inherit_the_lock(tmp_path):
    lock = StateDirLock(tmp_path).acquire()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=False)
    try:
        # once it runs its own code, exec has closed what it must not keep (the kernel
        # closes close-on-exec descriptors a moment after the parent's fork returns)
        assert child.stdout.readline() == b"up\n"
        lock.release()
        StateDirLock(tmp_path).acquire().release()  # the live child holds nothing
    finally:
        child.stdin.close()
        child.wait(10)
        child.stdout.close()


def test_twistd_agent_refuses_a_locked_state_directory(tmp_path):
    first = tap.makeService(options(tmp_path))
    with pytest.raises(StateDirLocked, match=r"in use by another agent \(pid \d+\)"):
        tap.makeService(options(tmp_path))
    first.journal.close()
    first.state_lock.release()
    second = tap.makeService(options(tmp_path))
    second.journal.close()
    second.state_lock.release()


def test_a_failed_start_up_releases_the_lock(tmp_path):
    from streamspace_common.settings import ConfigError

    with pytest.raises(ConfigError):
        tap.makeService(options(tmp_path, PLATFORM="vmware"))
    StateDirLock(tmp_path / "state").acquire().release()
