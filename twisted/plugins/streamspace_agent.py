"""twistd plugin `agent`: a StreamSpace agent that connects out to the control plane."""

from twisted.application.service import ServiceMaker

agent = ServiceMaker(
    "StreamSpace agent",
    "agent.tap",
    "Runs sessions on a platform (local, kubernetes) for a StreamSpace control plane.",
    "agent",
)
