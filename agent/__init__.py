"""StreamSpace agent: connects out to the control plane and runs sessions on a platform."""
