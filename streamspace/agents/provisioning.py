"""Pre-provisioned agents: a record whose token was generated outside the API.

An admin normally creates an agent with `POST /api/v1/agents` and hands its token over. A
deployment that brings its own agent (the Helm chart's Kubernetes agent, dev mode's local
agent) generates the token itself and registers only its hash here, before the agent first
connects. Idempotent: the record is created, or its token hash replaced (a rotated token);
nothing else about an existing agent changes.

    python -m streamspace.agents.provisioning

reads DATABASE_URL (or DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD), AGENT_ID,
AGENT_PLATFORM (default kubernetes), REGION and the token from AGENT_TOKEN_FILE (or
AGENT_TOKEN): from the environment and files, never from argv.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from streamspace.auth import agent_tokens
from streamspace.db import agents as agent_rows
from streamspace.db.pool import Database, dsn_from_options


async def ensure_agent(db: Database, *, agent_id: str, platform: str, region: str,
                       token: str, provisioned_by: str) -> bool:
    """Register `agent_id` with `token` (stored hashed); True when the record was new."""
    token_hash = agent_tokens.hash_token(token)

    async def work(cursor) -> bool:
        existing = await agent_rows.lock(cursor, agent_id)
        if existing is None:
            await agent_rows.create(cursor, agent_id=agent_id, platform=platform,
                                    region=region, capacity={},
                                    metadata={"provisioned_by": provisioned_by},
                                    token_hash=token_hash)
            return True
        await agent_rows.set_token_hash(cursor, existing["id"], token_hash)
        return False

    return await db.transaction(work)


def _settings(environ: Mapping[str, str]) -> tuple[str, dict, str]:
    problems = []
    agent_id = environ.get("AGENT_ID", "").strip()
    if not agent_id:
        problems.append("AGENT_ID: required")
    token = environ.get("AGENT_TOKEN", "").strip()
    token_file = environ.get("AGENT_TOKEN_FILE")
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            problems.append(f"AGENT_TOKEN_FILE: cannot read {token_file}: {e.strerror}")
            token = None
    if token == "":
        problems.append("AGENT_TOKEN_FILE (or AGENT_TOKEN): required, not empty")
    db = {"database_url": environ.get("DATABASE_URL"), "db_host": environ.get("DB_HOST"),
          "db_port": environ.get("DB_PORT", "5432"),
          "db_name": environ.get("DB_NAME", "streamspace"), "db_user": environ.get("DB_USER"),
          "db_password": environ.get("DB_PASSWORD")}
    if not db["database_url"] and not db["db_host"]:
        problems.append("DATABASE_URL or DB_HOST: required")
    if problems:
        raise SystemExit("streamspace.agents.provisioning: " + "; ".join(problems))
    return agent_id, db, token


async def _main(reactor, environ: Mapping[str, str]) -> None:
    agent_id, db_settings, token = _settings(environ)
    db = Database(dsn_from_options(db_settings), 1, reactor)
    await db.start()
    try:
        created = await ensure_agent(
            db, agent_id=agent_id, platform=environ.get("AGENT_PLATFORM", "kubernetes"),
            region=environ.get("REGION", ""), token=token, provisioned_by="deployment")
    finally:
        db.close()
    print(f"agent {agent_id}: {'created' if created else 'token updated'}", flush=True)


def main() -> None:
    from twisted.internet import defer, task

    task.react(lambda reactor: defer.ensureDeferred(_main(reactor, os.environ)))


if __name__ == "__main__":
    sys.exit(main())
