"""Stable uids for session accounts (review C1): the same user gets the same uid on an agent
each time, inside the reserved range, and never one that is taken or delegated."""

from __future__ import annotations

import pwd

from agent.platforms import local_accounts
from agent.platforms.local_accounts import UID_BASE, UID_COUNT, free_uid, uid_for


def test_a_users_uid_is_stable_and_in_the_reserved_range():
    uid = uid_for("tag-a", "u-alice")
    assert uid == uid_for("tag-a", "u-alice")
    assert UID_BASE <= uid < UID_BASE + UID_COUNT < 2**31
    assert len({uid, uid_for("tag-a", "u-bob"), uid_for("tag-b", "u-alice")}) == 3


def test_taken_and_delegated_ids_are_skipped(tmp_path, monkeypatch):
    preferred = uid_for("tag-a", "u-alice")
    subuid = tmp_path / "subuid"
    subuid.write_text(f"someone:{preferred}:3\nbroken line\n")
    monkeypatch.setattr(local_accounts, "SUBORDINATE_FILES", (str(subuid),))
    assert local_accounts.subordinate_ranges() == [range(preferred, preferred + 3)]
    taken = {preferred + 3}
    real_getpwuid = pwd.getpwuid

    def getpwuid(uid):
        if uid == preferred + 4:
            return real_getpwuid(0)  # someone has it
        return real_getpwuid(uid)

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    assert free_uid(preferred, taken) == preferred + 5
    # the range wraps around at its end
    last = UID_BASE + UID_COUNT - 1
    monkeypatch.setattr(local_accounts, "SUBORDINATE_FILES", ())
    assert free_uid(last, {last}) == UID_BASE
