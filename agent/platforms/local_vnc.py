"""The agent's way to a local session's VNC server: its RFB socket, checked at every dial.

The socket (`rfb.sock`) lives in the session's `vnc/` directory, which the session's
account owns (its Xvnc must create the socket there). So the session can put something
else under that name: a symlink to any socket on the machine (the Docker engine's, another
session's VNC server) or a socket of its own. The agent, often root, connecting by path
would follow it and hand this session's viewer, or the session itself, a way to what it
points at. So each dial opens the name with O_PATH|O_NOFOLLOW relative to the directory
descriptor the agent holds, checks that it is a socket owned by the session's account
(or by the agent's user when sessions run as it), and connects through
`/proc/self/fd/<that descriptor>`, which names exactly the inode checked.
"""

from __future__ import annotations

import os
import stat

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

from agent.platforms.xvnc import RFB_SOCKET


def open_checked_socket(dir_fd: int, owner_uid: int, name: str = RFB_SOCKET) -> int:
    """An O_PATH descriptor of the socket `name` in the directory `dir_fd` if it is a
    socket (not a symlink, not anything else) owned by `owner_uid`; the caller closes it."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        raise ConnectError(string=f"no VNC socket ({e.strerror})") from None
    try:
        info = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise ConnectError(string=f"the VNC socket cannot be checked ({e.strerror})") from None
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != owner_uid:
        os.close(fd)
        what = "a symlink" if stat.S_ISLNK(info.st_mode) else (
            "not a socket" if not stat.S_ISSOCK(info.st_mode) else f"owned by uid {info.st_uid}")
        raise ConnectError(string=f"refused: the session's VNC socket is {what}, not the "
                                  "socket its VNC server made")
    return fd


@implementer(IStreamClientEndpoint)
class CheckedSocketEndpoint:
    """Connects to the socket `name` in `dir_fd` after `open_checked_socket` passed it."""

    def __init__(self, reactor, dir_fd: int, owner_uid: int, timeout: float = 10) -> None:
        self.reactor, self.dir_fd, self.owner_uid = reactor, dir_fd, owner_uid
        self.timeout = timeout

    def connect(self, factory) -> defer.Deferred:
        try:
            fd = open_checked_socket(self.dir_fd, self.owner_uid)
        except ConnectError as e:
            return defer.fail(e)
        d = UNIXClientEndpoint(self.reactor, f"/proc/self/fd/{fd}",
                               timeout=self.timeout).connect(factory)

        def close(result):
            os.close(fd)  # the connection (or its failure) no longer needs the name
            return result

        return d.addBoth(close)
