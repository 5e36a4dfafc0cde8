"""Start-up check that Autobahn's native (NVX) WebSocket acceleration is active.

Without it, unmasking client frames runs in pure Python, roughly 65x slower: every VNC
byte a browser sends would pay that price.
"""

from __future__ import annotations

from twisted.logger import Logger

log = Logger()


def autobahn_uses_nvx() -> bool:
    try:
        from autobahn import websocket
    except ImportError:
        return False
    return bool(getattr(websocket, "USES_NVX", False))


def check_websocket_acceleration() -> bool:
    ok = autobahn_uses_nvx()
    if ok:
        log.info("autobahn native WebSocket acceleration (NVX) is active")
    else:
        log.critical(
            "!!! autobahn native WebSocket acceleration (NVX) is NOT active: WebSocket "
            "unmasking will be ~65x slower. Install autobahn from a binary wheel, or build "
            "it with a C compiler and cffi available (AUTOBAHN_USE_NVX=1). !!!")
    return ok
