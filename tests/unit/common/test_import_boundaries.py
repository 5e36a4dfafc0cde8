"""The layering the architecture promises, checked on the real import graph.

The agent imports nothing of the control plane (only `streamspace_common`), so it can
ship and run without it; the shared package imports neither side.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.processes import REPO

AGENT_MODULES = ["agent.tap", "agent.service", "agent.commands", "agent.channel",
                 "agent.control", "agent.tunnel", "agent.platforms.local"]


def _loaded_after_import(modules: list[str]) -> list[str]:
    code = ("import json, sys\n"
            + "".join(f"import {m}\n" for m in modules)
            + "print(json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def test_agent_never_imports_the_control_plane():
    loaded = _loaded_after_import(AGENT_MODULES)
    assert "agent.platforms.local" in loaded  # the probe really imported the agent
    control_plane = [m for m in loaded if m == "streamspace" or m.startswith("streamspace.")]
    assert control_plane == []


def test_shared_package_imports_neither_side():
    loaded = _loaded_after_import(["streamspace_common.wire", "streamspace_common.settings",
                                   "streamspace_common.capacity",
                                   "streamspace_common.logs", "streamspace_common.accel",
                                   "streamspace_common.procfs"])
    assert "streamspace_common.wire" in loaded
    sides = [m for m in loaded if m.split(".")[0] in ("streamspace", "agent")]
    assert sides == []
