"""A fake Kubernetes API server (see server.py for what each part stands for)."""

from tests.fakes.kube.controller import Timings
from tests.fakes.kube.server import FakeKube, load_role_rules

__all__ = ["FakeKube", "Timings", "load_role_rules"]
