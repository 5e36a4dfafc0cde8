"""twistd plugin `streamspace`: the control plane."""

from twisted.application.service import ServiceMaker

streamspace = ServiceMaker(
    "StreamSpace control plane",
    "streamspace.tap",
    "Browser-based container streaming: REST API, agent hub, VNC proxy and web UI.",
    "streamspace",
)
