"""Argon2id password hashing, off the reactor thread.

Hashing is deliberately slow (tens of milliseconds), so it runs on a small dedicated
thread pool; argon2-cffi releases the GIL while it works.
"""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

_hasher = PasswordHasher()
_pool: ThreadPool | None = None

# A real hash of a random password: verifying against it when a user does not exist
# takes the same time as a real check, so timing does not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def use_hasher(hasher: PasswordHasher) -> None:
    """Replace the hasher (tests use cheap parameters; production never calls this).

    Stored hashes carry their own parameters, so existing hashes still verify.
    """
    global _hasher, _DUMMY_HASH
    _hasher = hasher
    _DUMMY_HASH = hasher.hash(secrets.token_urlsafe(16))


def _threadpool(reactor) -> ThreadPool:
    global _pool
    if _pool is None:
        _pool = ThreadPool(minthreads=0, maxthreads=2, name="streamspace-argon2")
        _pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", _stop_pool)
    return _pool


def _stop_pool() -> None:
    global _pool
    if _pool is not None:
        _pool.stop()
        _pool = None


def _verify_sync(stored_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def hash_password(reactor, password: str) -> str:
    return await deferToThreadPool(reactor, _threadpool(reactor), _hasher.hash, password)


async def verify_password(reactor, stored_hash: str | None, password: str) -> bool:
    """True only for the right password of an existing user; constant work otherwise."""
    return await deferToThreadPool(
        reactor, _threadpool(reactor), _verify_sync, stored_hash, password)


def generate_password() -> str:
    return secrets.token_urlsafe(18)
