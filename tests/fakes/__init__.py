"""Fakes for what cannot run here (a Kubernetes API server), each kept honest by contract
tests that drive it with real clients."""
