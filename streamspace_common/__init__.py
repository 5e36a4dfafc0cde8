"""What the control plane and the agent share, and nothing else: the control-protocol
codec (`wire`), declarative settings with duration parsing (`settings`), log observers
(`logs`), the WebSocket acceleration check (`accel`), the validation of an agent's
capacity (`capacity`), and /proc readers with the system-tool lookup (`procfs`).

The agent imports only this package from outside `agent/`, so it never depends on
control-plane modules (and an agent image needs no control-plane code).
"""
