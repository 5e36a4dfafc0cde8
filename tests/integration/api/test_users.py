"""Users: admin CRUD, last-admin protection, deletion rules, password handling."""

from __future__ import annotations

import pytest_twisted

from tests.integration.api.support import (
    PASSWORD,
    count,
    make_session,
    make_template,
    make_user,
    token_for,
)


@pytest_twisted.ensureDeferred
async def test_admin_user_crud(client, db):
    admin = await make_user(db, "root", role="admin")
    at = token_for(admin)
    secret = "s3cret-password-for-zoe"
    client.secrets.add(secret)
    r = await client.post("/api/v1/users", {"username": "zoe", "password": secret,
                                            "display_name": "Zoe", "email": "zoe@example.com",
                                            "max_sessions": 2}, token=at)
    assert r.status == 201, r.body
    zoe = r.json
    assert zoe["role"] == "user" and zoe["max_sessions"] == 2 and zoe["disabled"] is False
    assert "password" not in zoe
    dup = await client.post("/api/v1/users", {"username": "zoe", "password": secret}, token=at)
    assert dup.status == 409 and dup.code == "username_taken"
    login = await client.post("/api/v1/auth/login", {"username": "zoe", "password": secret})
    assert login.status == 200

    got = await client.get(f"/api/v1/users/{zoe['id']}", token=at)
    assert got.json == zoe
    listed = await client.get("/api/v1/users", token=at)
    assert [u["username"] for u in listed.json] == ["root", "zoe"]
    assert [u["username"] for u in
            (await client.get("/api/v1/users?role=admin", token=at)).json] == ["root"]

    r = await client.patch(f"/api/v1/users/{zoe['id']}",
                           {"role": "admin", "max_sessions": None, "password": PASSWORD},
                           token=at)
    assert r.status == 200 and r.json["role"] == "admin" and r.json["max_sessions"] is None
    # the admin's password reset ended zoe's tokens
    assert (await client.get("/api/v1/auth/me", token=login.json["token"])).status == 401
    assert (await client.post("/api/v1/auth/login", {"username": "zoe", "password": PASSWORD})
            ).status == 200

    d = await client.delete(f"/api/v1/users/{zoe['id']}", token=at)
    assert d.status == 204
    assert (await client.get(f"/api/v1/users/{zoe['id']}", token=at)).status == 404
    actions = [r[0] for r in await db.query(
        "SELECT action FROM audit_log WHERE target_type = 'user' AND action LIKE 'user.%%' "
        "ORDER BY id")]
    assert actions == ["user.create", "user.update", "user.delete"]
    details = await db.query("SELECT details::text FROM audit_log")
    assert all(secret not in d[0] and PASSWORD not in d[0] for d in details)


@pytest_twisted.ensureDeferred
async def test_last_admin_and_self_protection(client, db):
    admin = await make_user(db, "root", role="admin")
    at = token_for(admin)
    for body in ({"role": "user"}, {"disabled": True}):
        r = await client.patch(f"/api/v1/users/{admin['id']}", body, token=at)
        assert r.status == 409 and r.code == "last_admin", body
    r = await client.delete(f"/api/v1/users/{admin['id']}", token=at)
    assert r.status == 409 and r.code == "cannot_delete_self"
    other = await make_user(db, "root2", role="admin")
    r = await client.patch(f"/api/v1/users/{other['id']}", {"role": "user"}, token=at)
    assert r.status == 200
    assert (await client.get("/api/v1/users", token=token_for(other))).status == 403  # now a user


@pytest_twisted.ensureDeferred
async def test_user_with_sessions_cannot_be_deleted(client, db):
    admin, alice = await make_user(db, "root", role="admin"), await make_user(db, "alice")
    sid = await make_session(db, alice, await make_template(db), state="running")
    r = await client.delete(f"/api/v1/users/{alice['id']}", token=token_for(admin))
    assert r.status == 409 and r.code == "user_has_sessions"
    await db.execute("UPDATE sessions SET state = 'terminated' WHERE id = %s", (sid,))
    assert (await client.delete(f"/api/v1/users/{alice['id']}", token=token_for(admin))
            ).status == 204
    assert await count(db, "sessions") == 0


@pytest_twisted.ensureDeferred
async def test_user_validation(client, db):
    at = token_for(await make_user(db, "root", role="admin"))
    for body, field in (({"username": "Bad Name", "password": PASSWORD}, "username"),
                        ({"username": "ok", "password": "short"}, "password"),
                        ({"username": "ok", "password": PASSWORD, "role": "root"}, "role"),
                        ({"username": "ok", "password": PASSWORD, "max_sessions": -1},
                         "max_sessions"),
                        ({"username": "ok", "password": PASSWORD, "max_sessions": 2**40},
                         "max_sessions"),
                        ({"username": "ok", "password": PASSWORD, "email": "nope"}, "email"),
                        ({"username": "ok"}, "password")):
        r = await client.post("/api/v1/users", body, token=at)
        assert r.status == 400 and f"`{field}`" in r.json["error"]["message"], (body, r.body)
    assert await count(db, "users") == 1
    for bad in ("x", "00000000-0000-0000-0000-000000000000"):
        assert (await client.get(f"/api/v1/users/{bad}", token=at)).status == 404


@pytest_twisted.ensureDeferred
async def test_password_policy_on_create_reset_and_change(client, db):
    """Issue 9 item 18: at least 12 characters and not the username, wherever a password
    is set; the refused request changes nothing."""
    at = token_for(await make_user(db, "root", role="admin"))
    eleven = "a-b-c-d-e-f"
    for body, words in (({"username": "olga", "password": eleven}, "at least 12"),
                        ({"username": "olga-the-great", "password": "OLGA-the-great"},
                         "must not be the username")):
        r = await client.post("/api/v1/users", body, token=at)
        assert r.status == 400 and words in r.json["error"]["message"], r.body
    assert await count(db, "users", "username LIKE 'olga%%'") == 0
    twelve = "a-b-c-d-e-f-"
    r = await client.post("/api/v1/users", {"username": "olga-the-great", "password": twelve},
                          token=at)
    assert r.status == 201, r.body
    user_id = r.json["id"]
    before = await db.query("SELECT password_hash FROM users WHERE id = %s", (user_id,))
    for password in (eleven, "olga-the-great"):
        r = await client.patch(f"/api/v1/users/{user_id}", {"password": password}, token=at)
        assert r.status == 400 and r.code in ("weak_password", "invalid_request"), r.body
    login = await client.post("/api/v1/auth/login",
                              {"username": "olga-the-great", "password": twelve})
    assert login.status == 200
    own = login.json["token"]
    for password in (eleven, " Olga-The-Great "):
        r = await client.post("/api/v1/auth/password",
                              {"current_password": twelve, "new_password": password},
                              token=own)
        assert r.status == 400, r.body
    after = await db.query("SELECT password_hash FROM users WHERE id = %s", (user_id,))
    assert before == after
