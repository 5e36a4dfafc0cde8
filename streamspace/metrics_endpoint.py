"""Who may read /metrics, and where it is served.

The operator chooses (README, "Metrics"):
- METRICS_ADDRESS: /metrics is served on that separate address only (e.g. a port that
  only the Prometheus network reaches); the main port answers 404 for it;
- METRICS_TOKEN: /metrics wants `Authorization: Bearer <token>` (on whichever address
  serves it);
- neither: served on the main port in dev mode only (which listens on loopback by
  default); otherwise 404 with a message saying how to turn it on.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from twisted.web import resource
from twisted.web.server import Site

from streamspace.api.errors import error_body
from streamspace.auth.bearer import parse_bearer
from streamspace.metrics import render_latest
from streamspace.request_limits import BoundedRequest


@dataclass(frozen=True)
class MetricsAccess:
    token: str | None = None
    separate: bool = False
    dev: bool = False

    @classmethod
    def from_options(cls, opts, dev: bool) -> MetricsAccess:
        return cls(token=opts["metrics_token"], separate=opts["metrics_address"] is not None,
                   dev=dev)

    def serve(self, request, *, on_metrics_address: bool = False) -> bytes:
        """The scrape body, or the refusal, for `request`."""
        if not on_metrics_address:
            if self.separate:
                return error_body(request, 404, "not_found",
                                  "metrics are served on METRICS_ADDRESS, not on this port")
            if self.token is None and not self.dev:
                return error_body(request, 404, "not_found",
                                  "metrics are off: set METRICS_TOKEN or METRICS_ADDRESS")
        if self.token is not None:
            given = parse_bearer(request.getHeader(b"authorization")) or ""
            if not hmac.compare_digest(given.encode("utf-8", "replace"),
                                       self.token.encode("utf-8")):
                request.setHeader(b"WWW-Authenticate", b"Bearer")
                return error_body(request, 401, "unauthorized",
                                  "send `Authorization: Bearer <METRICS_TOKEN>`")
        body, content_type = render_latest()
        request.setHeader(b"Content-Type", content_type.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        return body


class _MetricsOnly(resource.Resource):
    """The whole of the separate metrics address: GET /metrics, nothing else."""

    isLeaf = True

    def __init__(self, access: MetricsAccess) -> None:
        super().__init__()
        self.access = access

    def render(self, request) -> bytes:
        if request.path != b"/metrics":
            return error_body(request, 404, "not_found", "only /metrics is served here")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return error_body(request, 405, "method_not_allowed", "use GET")
        return self.access.serve(request, on_metrics_address=True)


def metrics_site(access: MetricsAccess) -> Site:
    site = Site(_MetricsOnly(access))
    site.requestFactory = BoundedRequest
    site.displayTracebacks = False
    return site
