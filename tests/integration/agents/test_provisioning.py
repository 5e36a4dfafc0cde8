"""Pre-provisioned agents (streamspace/agents/provisioning.py), as the Helm chart's
migration Job runs it: the real module as a process against a real database."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest_twisted

from streamspace.auth import agent_tokens
from streamspace.db import agents as agent_rows
from tests.support.processes import REPO, database_url


def provision(dsn: str, tmp_path, token: str, **env) -> subprocess.CompletedProcess:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    full = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO),
            "DATABASE_URL": database_url(dsn), "AGENT_ID": "chart-agent",
            "AGENT_TOKEN_FILE": str(token_file), "REGION": "eu-west", **env}
    return subprocess.run([sys.executable, "-m", "streamspace.agents.provisioning"], env=full,
                          capture_output=True, text=True, timeout=60)


@pytest_twisted.ensureDeferred
async def test_creates_then_rotates_the_token_and_stores_only_its_hash(db, migrated_dsn,
                                                                       tmp_path):
    first = provision(migrated_dsn, tmp_path, "first-token-" + "a" * 30)
    assert first.returncode == 0 and "chart-agent: created" in first.stdout, first.stderr
    row = await agent_rows.get_by_agent_id(db, "chart-agent")
    assert (row["platform"], row["region"]) == ("kubernetes", "eu-west")
    assert agent_tokens.verify("first-token-" + "a" * 30, row["token_hash"])
    assert "first-token" not in row["token_hash"]

    again = provision(migrated_dsn, tmp_path, "second-token-" + "b" * 30)
    assert again.returncode == 0 and "token updated" in again.stdout, again.stderr
    row2 = await agent_rows.get_by_agent_id(db, "chart-agent")
    assert row2["id"] == row["id"]
    assert agent_tokens.verify("second-token-" + "b" * 30, row2["token_hash"])
    assert not agent_tokens.verify("first-token-" + "a" * 30, row2["token_hash"])


def test_missing_settings_are_all_reported_at_once(migrated_dsn, tmp_path):
    result = provision(migrated_dsn, tmp_path, "", AGENT_ID="", DATABASE_URL="")
    assert result.returncode != 0
    for problem in ("AGENT_ID: required", "DATABASE_URL or DB_HOST: required",
                    "AGENT_TOKEN_FILE (or AGENT_TOKEN): required"):
        assert problem in result.stderr, result.stderr
