"""Re-owning a kept home (review C1) as root on real files: the walk never leaves the home,
whatever the session planted in it (symlinks to files and directories outside, a directory
swapped for a symlink while the walk runs, hard links to files of others)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted

from agent.platforms import local_store
from agent.platforms.base import DriverError

OLD, NEW, OUTSIDER, OTHER = 1879100001, 1879100002, 4321, 4444


@pytest.fixture
def tree(tmp_path):
    """A home of the previous account OLD, and files outside it that must stay untouched."""
    assert os.geteuid() == 0, "re-owning is done by a root agent: this test needs root"
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    for path in (outside / "secret", outside / "hard", outside / "dir" / "shadow"):
        path.write_text("not the session's")
    for path in (outside, outside / "dir", outside / "secret", outside / "hard",
                 outside / "dir" / "shadow"):
        os.chown(path, OUTSIDER, OUTSIDER)
    home = tmp_path / "home"
    (home / "sub" / "deeper").mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    (home / "sub" / "deeper" / "file").write_text("mine too")
    (home / "sub" / "shadow").write_text("the session's own file named like the target")
    (home / "link-to-file").symlink_to(outside / "secret")
    (home / "link-to-dir").symlink_to(outside / "dir")
    os.link(outside / "hard", home / "hard-link")
    (home / "someone-elses").write_text("planted")
    for path in (home, home / "notes.txt", home / "sub", home / "sub" / "deeper",
                 home / "sub" / "deeper" / "file", home / "sub" / "shadow",
                 home / "link-to-file", home / "link-to-dir"):
        os.chown(path, OLD, OLD, follow_symlinks=False)
    os.chown(home / "someone-elses", OTHER, OTHER)
    return home, outside


def owners(*paths: Path) -> set[int]:
    return {os.lstat(p).st_uid for p in paths}


def test_the_walk_gives_away_only_what_the_previous_owner_had_and_never_leaves(tree):
    home, outside = tree
    assert local_store.reown_tree(home, (NEW, NEW)) is True
    assert owners(home, home / "notes.txt", home / "sub", home / "sub" / "deeper",
                  home / "sub" / "deeper" / "file", home / "link-to-file",
                  home / "link-to-dir") == {NEW}
    # symlinks were changed themselves: their targets, and what a hard link shares with a
    # file outside, stay their owner's; so does a file someone else owns
    assert owners(outside, outside / "secret", outside / "hard", outside / "dir",
                  outside / "dir" / "shadow") == {OUTSIDER}
    assert owners(home / "hard-link") == {OUTSIDER}
    assert owners(home / "someone-elses") == {OTHER}
    # already the account's: nothing to do
    assert local_store.reown_tree(home, (NEW, NEW)) is False


def test_a_directory_swapped_for_a_symlink_during_the_walk_is_not_followed(tree, monkeypatch):
    """The race of C1, made deterministic: once the walk has listed `sub` (it holds a file
    `shadow`), the session swaps `sub` for a symlink to a directory outside that holds a
    `shadow` too. A walk that changes owners by path would now change the outside one."""
    home, outside = tree

    def swap_once_listed(walk):
        def walker(top, *args, **kwargs):
            for entry in walk(top, *args, **kwargs):
                if entry[0] == str(home / "sub"):
                    os.rename(home / "sub", home / "moved")
                    (home / "sub").symlink_to(outside / "dir")
                yield entry
        return walker

    monkeypatch.setattr(os, "walk", swap_once_listed(os.walk))
    monkeypatch.setattr(os, "fwalk", swap_once_listed(os.fwalk))
    local_store.reown_tree(home, (NEW, NEW))
    assert owners(outside / "dir", outside / "dir" / "shadow") == {OUTSIDER}
    assert owners(home / "moved" / "shadow") == {NEW}  # what the walk had listed: the real one


def test_a_home_the_agent_just_made_is_given_without_a_walk(tmp_path):
    assert os.geteuid() == 0, "this test needs root"
    home = tmp_path / "fresh"
    home.mkdir()
    (home / "planted-by-root").write_text("")  # root-owned: never given away
    assert local_store.reown_tree(home, (NEW, NEW)) is True
    assert owners(home) == {NEW} and owners(home / "planted-by-root") == {0}
    (tmp_path / "file").write_text("")
    with pytest.raises(DriverError, match="is not a directory"):
        local_store.reown_tree(tmp_path / "file", (NEW, NEW))


@pytest_twisted.ensureDeferred
async def test_a_second_session_of_the_home_waits_until_it_is_all_the_accounts(tmp_path,
                                                                              monkeypatch):
    """C1's race: a second start of the same kept home that comes while the first one is
    re-owning it must not go ahead (it would run in a tree still half the old owner's, its
    session free to swap directories under the walk) until the walk is over. The walk is
    held at its first entry until the test has seen whether the second start waited."""
    import threading

    from twisted.internet import defer, reactor

    from agent.platforms.local_store import LocalStore, SessionRecord
    from tests.support.polling import sleep, until

    assert os.geteuid() == 0, "this test needs root"
    store = LocalStore(tmp_path / "agent", reactor)
    home = store.homes_dir / "users" / "u-1" / "desktop"
    (home / "d").mkdir(parents=True)
    (home / "d" / "f").write_text("")
    for path in [home, *home.rglob("*")]:
        os.chown(path, OLD, OLD)
    walking, release = threading.Event(), threading.Event()
    real_chown = os.chown

    def held_chown(path, *args, **kwargs):
        if kwargs.get("dir_fd") is not None and not walking.is_set():
            walking.set()  # the walk's first entry: hold it here
            release.wait(20)
        return real_chown(path, *args, **kwargs)

    monkeypatch.setattr(os, "chown", held_chown)

    def record(session_id: str) -> SessionRecord:
        return SessionRecord(session_id=session_id, template="desktop", user_id="u-1",
                             username="u", name="", persistent_home=True, home=str(home),
                             state="starting")

    first = defer.ensureDeferred(store.prepare(record("s-1"), (NEW, NEW)))
    try:
        await until(walking.is_set, 20, what="the walk to start")
        second = defer.ensureDeferred(store.prepare(record("s-2"), (NEW, NEW)))
        await sleep(0.5)  # proving that nothing happens: the second start must wait
        went_ahead = second.called
    finally:
        release.set()
    await first
    await second
    assert not went_ahead
    assert {p.lstat().st_uid for p in [home, *home.rglob("*")]} == {NEW}
