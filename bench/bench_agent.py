"""A real StreamSpace agent (the product's agent code) whose single "session" is the bench
TCP target instead of an Xvnc display, so the relay path can be measured with controlled
traffic. Usage: bench_agent.py CONTROL_PLANE_URL AGENT_ID TOKEN TARGET_PORT STATE_DIR"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.internet import defer, reactor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.endpoints import ControlPlaneAddress  # noqa: E402
from agent.platforms.base import VncEndpoint  # noqa: E402
from agent.service import build_agent  # noqa: E402
from tests.support.fake_driver import FakeDriver  # noqa: E402


def main() -> None:
    url, agent_id, token, port, state = sys.argv[1:6]
    driver = FakeDriver(endpoint=VncEndpoint("127.0.0.1", int(port)))
    service = build_agent(reactor, agent_id=agent_id, address=ControlPlaneAddress.parse(url),
                          token=token, driver=driver, state_dir=Path(state),
                          heartbeat_interval=5.0)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown",
                                  lambda: defer.maybeDeferred(service.stopService))
    reactor.run()


if __name__ == "__main__":
    main()
