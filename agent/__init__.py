"""StreamSpace agent: connects out to the control plane and runs sessions on a platform."""

__version__ = "0.1.0"
