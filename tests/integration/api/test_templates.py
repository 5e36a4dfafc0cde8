"""Templates: catalog reads for users, admin writes, the default catalog on first start."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from streamspace.api.catalog import CatalogError, catalog_hook, load_catalog
from tests.integration.api.support import (
    TEMPLATE,
    count,
    make_session,
    make_template,
    make_user,
    token_for,
)

FIREFOX = {
    "name": "firefox-browser", "display_name": "Firefox", "description": "Web browser",
    "icon": "firefox.svg", "category": "Browsers", "vnc_port": 5900, "cpu": 1.5,
    "memory_mb": 2048, "env": {"MOZ_NO_REMOTE": "1"}, "persistent_home": True,
    "idle_timeout_seconds": 3600,
    "platforms": {"kubernetes": {"image": "example/firefox:1", "pull_policy": "Always"},
                  "local": {"command": "firefox-esr"}},
}


@pytest_twisted.ensureDeferred
async def test_admin_crud_and_user_visibility(client, db):
    admin, user = await make_user(db, "root", role="admin"), await make_user(db, "alice")
    at, ut = token_for(admin), token_for(user)
    r = await client.post("/api/v1/templates", FIREFOX, token=at)
    assert r.status == 201, r.body
    created = r.json
    assert {k: created[k] for k in FIREFOX} == FIREFOX and created["enabled"] is True
    dup = await client.post("/api/v1/templates", FIREFOX, token=at)
    assert dup.status == 409 and dup.code == "template_exists"
    assert (await client.post("/api/v1/templates", FIREFOX, token=ut)).status == 403

    r = await client.patch("/api/v1/templates/firefox-browser",
                           {"enabled": False, "cpu": 2, "env": {}}, token=at)
    assert r.status == 200 and r.json["enabled"] is False and r.json["cpu"] == 2
    assert r.json["env"] == {} and r.json["display_name"] == "Firefox"
    # disabled templates are invisible to users, visible to admins
    assert (await client.get("/api/v1/templates", token=ut)).json == []
    assert (await client.get("/api/v1/templates/firefox-browser", token=ut)).status == 404
    assert len((await client.get("/api/v1/templates", token=at)).json) == 1
    assert (await client.get("/api/v1/templates?enabled=false", token=at)).json[0]["name"] \
        == "firefox-browser"
    await client.patch("/api/v1/templates/firefox-browser", {"enabled": True}, token=at)
    listed = await client.get("/api/v1/templates?category=Browsers", token=ut)
    assert [t["name"] for t in listed.json] == ["firefox-browser"]

    assert (await client.delete("/api/v1/templates/firefox-browser", token=ut)).status == 403
    d = await client.delete("/api/v1/templates/firefox-browser", token=at)
    assert d.status == 204
    assert (await client.get("/api/v1/templates/firefox-browser", token=at)).status == 404
    assert await count(db, "audit_log", "target_type = 'template'") == 4


@pytest_twisted.ensureDeferred
async def test_validation_names_the_field(client, db):
    at = token_for(await make_user(db, "root", role="admin"))
    cases = [
        ({**FIREFOX, "name": "Bad Name"}, "name"),
        ({**FIREFOX, "vnc_port": 70000}, "vnc_port"),
        ({**FIREFOX, "vnc_port": "5900"}, "vnc_port"),
        ({**FIREFOX, "cpu": 0}, "cpu"),
        ({**FIREFOX, "cpu": True}, "cpu"),
        ({**FIREFOX, "memory_mb": 1.5}, "memory_mb"),
        ({**FIREFOX, "env": {"1BAD": "x"}}, "env"),
        ({**FIREFOX, "env": {"A": 1}}, "env.A"),
        ({**FIREFOX, "platforms": {"kubernetes": {}}}, "platforms.kubernetes.image"),
        ({**FIREFOX, "platforms": {"local": {"command": ""}}}, "platforms.local.command"),
        ({**FIREFOX, "platforms": {"local": "xterm"}}, "platforms.local"),
        ({**FIREFOX, "persistent_home": "yes"}, "persistent_home"),
        ({**FIREFOX, "colour": "red"}, "colour"),
        ({k: v for k, v in FIREFOX.items() if k != "name"}, "name"),
    ]
    for body, field in cases:
        r = await client.post("/api/v1/templates", body, token=at)
        assert r.status == 400, (field, r.body)
        assert f"`{field}" in r.json["error"]["message"], (field, r.json)
    assert await count(db, "templates") == 0
    r = await client.patch("/api/v1/templates/nope", {"cpu": 1}, token=at)
    assert r.status == 404
    await make_template(db)
    r = await client.patch("/api/v1/templates/terminal", {"name": "renamed"}, token=at)
    assert r.status == 400  # the name is the template's identity
    r = await client.patch("/api/v1/templates/terminal", {}, token=at)
    assert r.status == 400 and "nothing to change" in r.json["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_template_in_use_cannot_be_deleted(client, db):
    admin, user = await make_user(db, "root", role="admin"), await make_user(db, "alice")
    template = await make_template(db)
    sid = await make_session(db, user, template, state="running")
    r = await client.delete("/api/v1/templates/terminal", token=token_for(admin))
    assert r.status == 409 and r.code == "template_in_use"
    await db.execute("UPDATE sessions SET state = 'terminated' WHERE id = %s", (sid,))
    assert (await client.delete("/api/v1/templates/terminal", token=token_for(admin))
            ).status == 204
    # the session keeps its template's name
    r = await client.get(f"/api/v1/sessions/{sid}", token=token_for(user))
    assert r.json["template"] == "terminal"


@pytest_twisted.ensureDeferred
async def test_default_catalog_loads_once_into_an_empty_table(db):
    entries = load_catalog()
    names = {t["name"] for t in entries}
    assert {"terminal", "desktop", "chromium-browser"} <= names
    for t in entries:
        assert t["platforms"]["local"]["command"] and t["platforms"]["kubernetes"]["image"]
    hook = catalog_hook(entries)
    await hook(db)
    assert await count(db, "templates") == len(entries)
    await db.execute("DELETE FROM templates WHERE name = 'terminal'")
    await hook(db)  # not empty: an admin's deletion is respected
    assert await count(db, "templates") == len(entries) - 1


@pytest_twisted.ensureDeferred
async def test_catalog_not_loaded_over_existing_templates(db):
    await make_template(db, name="custom")
    await catalog_hook(load_catalog())(db)
    assert await count(db, "templates") == 1


def test_bad_catalog_is_a_clear_error(tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"templates": [{**TEMPLATE, "vnc_port": 0}]}))
    with pytest.raises(CatalogError, match="entry 0 .*vnc_port"):
        load_catalog(path)
    path.write_text("{nope")
    with pytest.raises(CatalogError):
        load_catalog(path)
