"""First-start provisioning: the initial admin account and where its password lives."""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.logger import Logger

from streamspace.auth.passwords import generate_password, hash_password
from streamspace.db import users
from streamspace.db.pool import Database
from streamspace.secrets_store import write_private

log = Logger()

ADMIN_USERNAME = "admin"


def admin_credentials_file(state_dir: Path) -> Path:
    return Path(state_dir) / "admin-credentials"


def initial_admin_hook(reactor, state_dir: Path, admin_password: str | None):
    """A start-up hook creating `admin` once: ADMIN_PASSWORD, else a generated password
    printed once and written 0600 to the state directory."""

    async def hook(db: Database) -> None:
        if await users.admin_exists(db):
            path = admin_credentials_file(state_dir)
            if not admin_password and path.exists():
                log.info("the password of `admin` is in {path} (as first generated)",
                         path=str(path))
            return
        password = admin_password or generate_password()
        created = await users.create_initial_admin(
            db, ADMIN_USERNAME, await hash_password(reactor, password))
        if not created:
            return
        if admin_password:
            log.info("created admin account `admin` with the password from ADMIN_PASSWORD")
            return
        path = admin_credentials_file(state_dir)
        write_private(path, f"username: {ADMIN_USERNAME}\npassword: {password}\n")
        # Printed once to the real terminal (not the log, which twistd captures from
        # sys.stdout and may keep in a file); the log carries only the path.
        print(f"\n  Admin account created: username `{ADMIN_USERNAME}`, password `{password}`\n"
              f"  (also saved in {path}, readable only by you)\n", file=sys.__stdout__, flush=True)
        log.info("admin credentials written to {path}", path=str(path))

    return hook
