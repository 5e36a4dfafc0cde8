"""A small TCP -> WebSocket bridge so a real VNC client (vncdotool) can use the VNC proxy.

It plays the part of noVNC's transport: each TCP connection on the bridge port becomes one
binary WebSocket to the given URL, bytes passed through unchanged both ways. Threads and
blocking sockets on purpose: this runs beside the system under test, never in its reactor.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.request

import websocket  # websocket-client


def fresh_vnc_url(http_base: str, ws_base: str, session_id: str, token: str):
    """A URL factory for `Bridge`: asks for a new VNC token per connection (they are
    single-use), blocking, in the bridge's thread."""

    def factory() -> str:
        req = urllib.request.Request(f"{http_base}/api/v1/sessions/{session_id}/vnc-token",
                                     method="POST", headers={"Authorization": f"Bearer {token}"})
        body = json.load(urllib.request.urlopen(req, timeout=10))
        return ws_base + body["url"]

    return factory


class Bridge:
    def __init__(self, ws_url_factory, headers: dict | None = None) -> None:
        self.ws_url_factory = ws_url_factory  # called per connection (fresh tokens)
        self.headers = headers or {}
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        self.errors: list[str] = []
        self.close_reasons: list[tuple] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            ws = websocket.create_connection(self.ws_url_factory(), header=self.headers,
                                             subprotocols=["binary"], timeout=30)
        except Exception as e:  # reported to the test
            self.errors.append(repr(e))
            conn.close()
            return

        def ws_to_tcp():
            try:
                while True:
                    opcode, data = ws.recv_data(control_frame=False)
                    if opcode == websocket.ABNF.OPCODE_CLOSE:
                        self.close_reasons.append(_close_info(data))
                        break
                    conn.sendall(data)
            except Exception:
                pass
            finally:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        t = threading.Thread(target=ws_to_tcp, daemon=True)
        t.start()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                ws.send_binary(data)
        except Exception:
            pass
        finally:
            try:
                ws.close()
            except Exception:
                pass
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.server.close()


def _close_info(data: bytes) -> tuple:
    if len(data) >= 2:
        return int.from_bytes(data[:2], "big"), data[2:].decode(errors="replace")
    return (None, "")
