"""/users: account administration (admin only)."""

from __future__ import annotations

from streamspace.api import shapes
from streamspace.api.auth_routes import MAX_PASSWORD, MIN_PASSWORD, check_password_policy, now
from streamspace.api.body import (
    USERNAME,
    USERNAME_HELP,
    Field,
    is_uuid,
    query_bool,
    query_choice,
    read_json,
    validate,
)
from streamspace.api.errors import conflict, not_found
from streamspace.auth import passwords
from streamspace.db import users
from streamspace.sessions.states import TERMINATED

ROLES = ("admin", "user")
EMAIL = r"([^@\s]+@[^@\s]+)?"

_COMMON = {
    "role": Field("string", choices=ROLES),
    "display_name": Field("string", max_len=128),
    "email": Field("string", max_len=254, pattern=EMAIL,
                   pattern_help="must be an email address (or empty)"),
    "disabled": Field("boolean"),
    "max_sessions": Field("integer", nullable=True, min=0, max=10_000),
}
CREATE_FIELDS = {
    "username": Field("string", required=True, pattern=USERNAME, pattern_help=USERNAME_HELP),
    "password": Field("string", required=True, min_len=MIN_PASSWORD, max_len=MAX_PASSWORD),
    **_COMMON,
}
UPDATE_FIELDS = {
    "password": Field("string", min_len=MIN_PASSWORD, max_len=MAX_PASSWORD),
    **_COMMON,
}


def _user_id(user_id: str) -> str:
    if not is_uuid(user_id):
        raise not_found("no such user")
    return user_id.lower()


async def list_users(api, request):
    await api.admin(request)
    rows = await users.list_users(api.ctx.db, role=query_choice(request, "role", ROLES),
                                  disabled=query_bool(request, "disabled"))
    return api.ok(request, [shapes.user(r) for r in rows])


async def get_user(api, request, user_id):
    await api.admin(request)
    user = await users.get(api.ctx.db, _user_id(user_id))
    if user is None:
        raise not_found("no such user")
    return api.ok(request, shapes.user(user))


async def create_user(api, request):
    principal = await api.admin(request)
    body = validate(read_json(request), CREATE_FIELDS)
    check_password_policy(body["password"], body["username"])
    password_hash = await passwords.hash_password(api.ctx.reactor, body["password"])

    async def work(cursor):
        user = await users.create(
            cursor, username=body["username"], password_hash=password_hash,
            role=body.get("role", "user"), display_name=body.get("display_name", ""),
            email=body.get("email", ""), max_sessions=body.get("max_sessions"))
        if user is None:
            raise conflict("username_taken", f"the username `{body['username']}` is taken")
        if body.get("disabled"):
            user = await users.update(cursor, user["id"], {"disabled": True})
        await api.audit(cursor, request, principal, "user.create", "user", user["id"],
                        details={"username": user["username"], "role": user["role"]})
        return user

    user = await api.ctx.db.transaction(work)
    request.setHeader(b"Location", f"/api/v1/users/{user['id']}".encode())
    return api.ok(request, shapes.user(user), 201)


async def _check_not_last_admin(cursor, target: dict, message: str) -> None:
    if target["role"] != "admin" or target["disabled"]:
        return
    admins = await users.lock_active_admins(cursor)
    if admins == [target["id"]]:
        raise conflict("last_admin", message)


async def update_user(api, request, user_id):
    principal = await api.admin(request)
    user_id = _user_id(user_id)
    body = validate(read_json(request), UPDATE_FIELDS, partial=True)
    changes = {k: v for k, v in body.items() if k != "password"}
    if "password" in body:
        target = await users.get(api.ctx.db, user_id)
        if target is None:
            raise not_found("no such user")
        check_password_policy(body["password"], target["username"])
        changes["password_hash"] = await passwords.hash_password(api.ctx.reactor,
                                                                 body["password"])
    at = now(api)

    async def work(cursor):
        await users.lock_active_admins(cursor)  # one admin change at a time
        target = await users.lock(cursor, user_id)
        if target is None:
            raise not_found("no such user")
        if changes.get("role") == "user" or changes.get("disabled") is True:
            await _check_not_last_admin(
                cursor, target, "this is the only active admin; make another admin first")
        # A new password or a disabled account ends every token issued before now.
        invalidate = "password_hash" in changes or changes.get("disabled") is True
        updated = await users.update(cursor, user_id, changes,
                                     invalidate_tokens_at=at if invalidate else None)
        await api.audit(cursor, request, principal, "user.update", "user", user_id,
                        details={"username": target["username"],
                                 "changed": sorted(body),
                                 **{k: v for k, v in body.items()
                                    if k in ("role", "disabled", "max_sessions")}})
        return updated, invalidate or changes.get("role", target["role"]) != target["role"]

    user, ends_viewers = await api.ctx.db.transaction(work)
    if ends_viewers:
        await api.notify("vnc_proxy", "end_for_user", user_id, "the account changed")
    return api.ok(request, shapes.user(user))


async def delete_user(api, request, user_id):
    principal = await api.admin(request)
    user_id = _user_id(user_id)
    if user_id == principal.user_id:
        raise conflict("cannot_delete_self", "you cannot delete your own account")

    async def work(cursor):
        await users.lock_active_admins(cursor)
        target = await users.lock(cursor, user_id)
        if target is None:
            raise not_found("no such user")
        await _check_not_last_admin(cursor, target, "this is the only active admin")
        open_sessions = await users.count_unfinished_sessions(cursor, user_id, (TERMINATED,))
        if open_sessions:
            raise conflict("user_has_sessions",
                           f"this user still has {open_sessions} session(s); delete them "
                           "first, or disable the account instead")
        await users.delete(cursor, user_id)
        await api.audit(cursor, request, principal, "user.delete", "user", user_id,
                        details={"username": target["username"]})

    await api.ctx.db.transaction(work)
    await api.notify("vnc_proxy", "end_for_user", user_id, "the account was deleted")
    return api.no_content(request)
