"""Which private paths a sandbox must cover (review should-fix 3): those under a directory
it binds whole, seen through symlinks, as they appear inside."""

from __future__ import annotations

import os

from agent.platforms import sandbox
from agent.platforms.local_session import private_paths


def test_paths_under_a_bound_directory_are_covered_where_they_show_inside(tmp_path):
    opt = tmp_path / "opt"
    (opt / "streamspace" / ".streamspace" / "agent").mkdir(parents=True)
    (opt / "streamspace" / "notes").write_text("")
    real = tmp_path / "data"
    (real / "state").mkdir(parents=True)
    (opt / "link").symlink_to(real)  # a bound directory seen through a symlink
    elsewhere = tmp_path / "srv" / "state"
    elsewhere.mkdir(parents=True)
    found = sandbox.hidden_under(
        [str(opt / "streamspace" / ".streamspace" / "agent"),
         str(opt / "streamspace" / ".streamspace"), str(opt / "streamspace" / "notes"),
         str(elsewhere), str(opt / "missing")],
        [str(opt), str(real)])
    # (the agent's directory inside the control plane's is covered with it)
    assert found == [(str(opt / "streamspace" / ".streamspace"), True),
                     (str(opt / "streamspace" / "notes"), False)]
    # a path reached through a symlink shows where the bound directory has it
    assert sandbox.hidden_under([str(opt / "link" / "state")], [str(real)]) == [
        (str(real / "state"), True)]


def test_the_sandbox_arguments_cover_them_with_an_empty_read_only_tmpfs():
    args, _tail = sandbox.sandbox_args(binds=(), ro_binds=(), env={}, cwd="/",
                                       command=["/bin/true"], run_as=None,
                                       unprivileged=True, hidden=["/usr/share", "/nonexistent"])
    i = args.index("/usr/share")
    assert args[i - 3:i + 3] == ["--perms", "0755", "--tmpfs", "/usr/share", "--remount-ro",
                                 "/usr/share"]
    assert args.index("--ro-bind") < i < args.index("--proc")  # after /usr is bound
    assert "/nonexistent" not in args


def test_the_agent_always_hides_its_state_directory_and_checkout(tmp_path):
    paths = private_paths(tmp_path / "agent", ["/opt/cp-state", ""])
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(sandbox.__file__)))
    assert paths == (str(tmp_path / "agent"), "/opt/cp-state", checkout)
