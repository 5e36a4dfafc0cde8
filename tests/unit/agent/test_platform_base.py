"""Driver-side value checks: templates, capacity refusals, display/port allocation."""

import pytest

from agent.platforms.base import (
    Capacity,
    CapacityError,
    SessionTemplate,
    Usage,
    UserRef,
    check_capacity,
)
from agent.platforms.xvnc import DisplayAllocator, xvnc_argv


def test_template_from_the_control_plane_shape():
    t = SessionTemplate.from_json({
        "name": "firefox-browser", "vnc_port": 5900, "cpu": "1.50", "memory_mb": 2048,
        "env": {"LANG": "C.UTF-8", "N": 3}, "persistent_home": True,
        "platforms": {"local": {"command": "firefox"}, "kubernetes": {"image": "x"}}})
    assert t.cpu == 1.5 and t.memory_mb == 2048 and t.persistent_home
    assert t.env == {"LANG": "C.UTF-8", "N": "3"}
    assert t.platform("local")["command"] == "firefox" and t.platform("docker") == {}


@pytest.mark.parametrize("data, problem", [
    (None, "template must be an object"),
    ({"name": "../x"}, "slug"),
    ({"name": "a", "cpu": "lots"}, "numbers"),
    ({"name": "a", "cpu": -1}, "negative"),
    ({"name": "a", "env": {"A=B": "x"}}, "invalid variable name"),
    ({"name": "a", "env": {"A": "x\0y"}}, "NUL"),
    ({"name": "a", "platforms": "local"}, "platforms must be an object"),
])
def test_bad_templates_are_refused(data, problem):
    with pytest.raises(ValueError, match=problem):
        SessionTemplate.from_json(data)


def test_users_are_checked():
    assert UserRef.from_json({"id": "u-1", "username": "a"}).id == "u-1"
    with pytest.raises(ValueError):
        UserRef.from_json({"id": "../root"})


def test_capacity_messages_name_the_limit():
    small = SessionTemplate.from_json({"name": "t", "cpu": 1, "memory_mb": 1024})
    check_capacity(Capacity(), Usage(100, 100, 100), small)  # 0 = unlimited
    with pytest.raises(CapacityError, match="MAX_SESSIONS"):
        check_capacity(Capacity(max_sessions=2), Usage(2, 0, 0), small)
    with pytest.raises(CapacityError, match="MAX_CPU"):
        check_capacity(Capacity(max_cpu=2), Usage(1, 1.5, 0), small)
    with pytest.raises(CapacityError, match="MAX_MEMORY"):
        check_capacity(Capacity(max_memory_gb=2), Usage(1, 0, 1.5), small)
    check_capacity(Capacity(max_sessions=2, max_cpu=2, max_memory_gb=2), Usage(1, 1, 1), small)


def test_display_allocation_skips_busy_displays_and_reuses_freed_ones():
    busy = {10, 12}
    alloc = DisplayAllocator(first=10, count=5, in_use=lambda n: n in busy)
    a = alloc.allocate()
    b = alloc.allocate()
    assert (a, b) == (11, 13)
    alloc.release(a)
    with pytest.raises(OSError, match="no free X display"):
        alloc.allocate(avoid={11, 14})  # e.g. displays whose Xvnc just failed to start
    assert alloc.allocate() == 11
    assert alloc.allocate() == 14
    with pytest.raises(OSError, match="no free X display"):
        alloc.allocate()


def test_xvnc_command_line():
    argv = xvnc_argv(12, "/run/streamspace/vnc/rfb.sock", "/run/streamspace/Xauthority")
    assert argv[:2] == ["Xvnc", ":12"]
    for flag in ("-AlwaysShared", "-UseBlacklist=0"):
        assert flag in argv
    assert argv[argv.index("-SecurityTypes") + 1] == "None"
    # RFB on the Unix socket only, X11 only with the cookie and never over TCP
    assert argv[argv.index("-rfbport") + 1] == "-1"
    assert argv[argv.index("-rfbunixpath") + 1] == "/run/streamspace/vnc/rfb.sock"
    assert argv[argv.index("-rfbunixmode") + 1] == "0600"
    assert argv[argv.index("-auth") + 1] == "/run/streamspace/Xauthority"
    assert argv[argv.index("-nolisten") + 1] == "tcp"
    assert argv[argv.index("-geometry") + 1] == "1280x800"
    assert argv[argv.index("-depth") + 1] == "24"
