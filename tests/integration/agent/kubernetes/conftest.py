"""One fake API server (and one real Xvnc behind its pods) per test module."""

from __future__ import annotations

import pytest
from twisted.internet import reactor

from tests.fakes.kube.harness import KubeHarness
from tests.integration.agent.conftest import block
from tests.support.k8s_binaries import helm  # noqa: F401 - for the chart's agent test
from tests.support.xvnc_sessions import kill_leftovers


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    directory = tmp_path_factory.mktemp("kube")
    h = KubeHarness(reactor, directory)
    block(h.start())
    yield h
    block(h.stop())
    assert not kill_leftovers(directory), "the test Xvnc outlived its module"
