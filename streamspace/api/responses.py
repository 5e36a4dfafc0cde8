"""JSON response bodies: the headers every JSON answer carries, in one place."""

from __future__ import annotations

import json
from typing import Any


def json_body(request, payload: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(payload, default=str).encode()
