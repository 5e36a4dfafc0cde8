"""Container HEALTHCHECK for the StreamSpace images (standard library only).

    python healthcheck.py control-plane   GET /health on the local HTTP port answers healthy
    python healthcheck.py agent           this user holds an established TCP connection to
                                          the control plane named by CONTROL_PLANE_URL

The agent serves no port of its own; what matters is that its control connection is up
(it reconnects by itself, so a failing check means the control plane is unreachable or
refuses it). Exit 0 when healthy, 1 with a one-line reason otherwise.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import urllib.request
from urllib.parse import urlparse

ESTABLISHED = "01"


def control_plane() -> str | None:
    port = os.environ.get("PORT", "8080")
    host = os.environ.get("LISTEN_ADDRESS", "")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=4) as resp:
            body = json.load(resp)
    except (OSError, ValueError) as e:
        return f"/health did not answer: {e}"
    return None if body.get("status") == "healthy" else f"/health answered {body}"


def _decode(hex_address: str) -> tuple[ipaddress._BaseAddress, int]:
    """An address of /proc/net/tcp{,6}: the IP as 32-bit words in host order, then the port."""
    ip_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(ip_hex)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip, int(port_hex, 16)


def agent() -> str | None:
    url = urlparse(os.environ.get("CONTROL_PLANE_URL", ""))
    if not url.hostname:
        return "CONTROL_PLANE_URL is not set"
    port = url.port or (443 if url.scheme in ("https", "wss") else 80)
    try:
        wanted = {ipaddress.ip_address(info[4][0].split("%")[0])
                  for info in socket.getaddrinfo(url.hostname, port, proto=socket.IPPROTO_TCP)}
    except OSError as e:
        return f"cannot resolve {url.hostname}: {e}"
    uid = os.getuid()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] != ESTABLISHED or int(fields[7]) != uid:
                continue
            if _decode(fields[2]) in {(ip, port) for ip in wanted}:
                return None
    return f"no connection to the control plane {url.hostname}:{port}"


def main() -> int:
    checks = {"control-plane": control_plane, "agent": agent}
    if len(sys.argv) != 2 or sys.argv[1] not in checks:
        print(f"usage: healthcheck.py {{{','.join(checks)}}}", file=sys.stderr)
        return 2
    problem = checks[sys.argv[1]]()
    if problem:
        print(f"unhealthy: {problem}")
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
