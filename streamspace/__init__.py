"""StreamSpace control plane: REST API, agent hub and VNC proxy on Twisted."""

__version__ = "0.1.0"
