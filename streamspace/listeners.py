"""Where the control plane's site listens: a TCP port (TLS when given options) and, for
a reverse proxy on the same machine, a Unix socket only the proxy's group can reach.

A port or socket already in use is a one-line fatal error; stopping closes the listener,
then the idle HTTP connections of its site.
"""

from __future__ import annotations

import errno
import grp
import os
import socket
import stat

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError

UNIX_SOCKET_MODE = 0o660  # owner and group (the proxy's) only


class _Listener(service.Service):
    def __init__(self, factory, name: str) -> None:
        self.factory = factory
        self.name = name
        self.listening = None

    def stopService(self):
        super().stopService()
        if self.listening is not None:
            listening, self.listening = self.listening, None
            d = defer.maybeDeferred(listening.stopListening)
            close = getattr(self.factory, "close_connections", None)
            if close is not None:
                d.addCallback(lambda _: close())
            return d
        return None


class ListeningService(_Listener):
    """Listens on a TCP port (TLS when given options).

    The accept queue is deep (Twisted's default is 50): a burst of viewers, each bringing
    its agent's tunnel leg, must not overflow it into SYN retries and handshake timeouts.
    """

    BACKLOG = 1024

    def __init__(self, reactor, port: int, factory, interface: str, *, tls=None,
                 name: str = "web") -> None:
        super().__init__(factory, name)
        self.reactor, self.port, self.interface = reactor, port, interface
        self.tls = tls

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            if self.tls is not None:
                self.listening = self.reactor.listenSSL(
                    self.port, self.factory, self.tls, backlog=self.BACKLOG,
                    interface=self.interface)
            else:
                self.listening = self.reactor.listenTCP(
                    self.port, self.factory, backlog=self.BACKLOG, interface=self.interface)
        except CannotListenError as e:
            raise SystemExit(f"streamspace: cannot listen on {self.interface}:{self.port}: "
                             f"{e.socketError.strerror if e.socketError else e}") from None

    def url(self) -> str:
        """Where it really listens, e.g. https://127.0.0.1:8443 (IPv6 in brackets)."""
        host = self.listening.getHost()
        address = f"[{host.host}]" if ":" in host.host else host.host
        return f"{'https' if self.tls is not None else 'http'}://{address}:{host.port}"


class UnixListeningService(_Listener):
    """Listens on a Unix socket, mode 0660, owned by `group` if given.

    Whoever connects there is taken for the reverse proxy (its X-Forwarded-For names the
    client), so the socket is created with that mode from the start (umask around the
    bind: no moment when others may connect). A socket file nobody listens on any more
    (a run killed hard) is replaced; one still answering is someone's: a fatal error."""

    def __init__(self, reactor, path: str, factory, group: str | None = None,
                 name: str = "web-unix") -> None:
        super().__init__(factory, name)
        self.reactor, self.path, self.group = reactor, path, group

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        _remove_if_abandoned(self.path)
        previous = os.umask(0o777 & ~UNIX_SOCKET_MODE)  # at start-up, before any thread
        try:
            self.listening = self.reactor.listenUNIX(self.path, self.factory,
                                                     mode=UNIX_SOCKET_MODE)
        except CannotListenError as e:
            raise SystemExit(f"streamspace: cannot listen on unix:{self.path}: "
                             f"{e.socketError.strerror if e.socketError else e}") from None
        finally:
            os.umask(previous)
        if self.group is not None:
            os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)

    def url(self) -> str:
        return f"unix:{self.path}"


def _remove_if_abandoned(path: str) -> None:
    """Unlink a socket file at `path` that refuses connections (its server is gone).
    Runs once at start-up, before the reactor: a local connect answers at once."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return  # not a socket (or a symlink): listening fails and says so
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno == errno.ECONNREFUSED:
            os.unlink(path)
    finally:
        probe.close()
