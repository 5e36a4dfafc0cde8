"""/templates: the application catalog (read for everyone, written by admins)."""

from __future__ import annotations

import re
from typing import Any

from streamspace.api import shapes
from streamspace.api.body import (
    PLATFORM,
    SLUG,
    SLUG_HELP,
    Field,
    query,
    query_bool,
    read_json,
    validate,
)
from streamspace.api.errors import bad_request, conflict, not_found
from streamspace.db import templates
from streamspace.sessions.states import FAILED, TERMINATED

MAX_PLATFORMS = 16


def check_platforms(name: str, value: dict[str, Any]) -> dict[str, Any]:
    """Per-platform settings: `kubernetes.image` and `local.command` are checked; other
    keys are passed to the platform driver as they are."""
    if len(value) > MAX_PLATFORMS:
        raise bad_request(f"`{name}` must have at most {MAX_PLATFORMS} platforms")
    for platform, settings in value.items():
        where = f"{name}.{platform[:50]}"
        if not re.fullmatch(PLATFORM, platform):
            raise bad_request(f"`{where}` is not a platform name such as `local`")
        if not isinstance(settings, dict):
            raise bad_request(f"`{where}` must be an object")
        required = {"kubernetes": "image", "local": "command"}.get(platform)
        if required is not None:
            item = settings.get(required)
            if not isinstance(item, str) or not item.strip():
                raise bad_request(f"`{where}.{required}` is required and must be a "
                                  "non-empty string")
            if len(item) > 4096:
                raise bad_request(f"`{where}.{required}` must be at most 4096 characters")
    return value


_FIELDS = {
    "display_name": Field("string", min_len=1, max_len=128),
    "description": Field("string", max_len=4096),
    "icon": Field("string", max_len=2048),
    "category": Field("string", max_len=64),
    "vnc_port": Field("integer", min=1, max=65535),
    "cpu": Field("number", min=0.01, max=1000),
    "memory_mb": Field("integer", min=16, max=1_048_576),
    "env": Field("string_map", max_len=256),
    "persistent_home": Field("boolean"),
    "idle_timeout_seconds": Field("integer", nullable=True, min=1, max=31_536_000),
    "platforms": Field("object", custom=check_platforms),
    "enabled": Field("boolean"),
}
CREATE_FIELDS = {
    "name": Field("string", required=True, pattern=SLUG, pattern_help=SLUG_HELP),
    **_FIELDS,
}
UPDATE_FIELDS = _FIELDS


def validate_new(body: dict[str, Any]) -> dict[str, Any]:
    """A complete template from a create body or a catalog entry (defaults filled in)."""
    fields = validate(body, CREATE_FIELDS)
    fields.setdefault("display_name", fields["name"])
    return fields


def _name(name: str) -> str:
    if not re.fullmatch(SLUG, name):
        raise not_found("no such template")
    return name


async def list_templates(api, request):
    principal = await api.principal(request)
    enabled = query_bool(request, "enabled")
    category = query(request, "category")
    rows = await templates.list_templates(
        api.ctx.db, include_disabled=principal.is_admin, category=category)
    if enabled is not None:
        rows = [r for r in rows if r["enabled"] == enabled]
    return api.ok(request, [shapes.template(r) for r in rows])


async def get_template(api, request, name):
    principal = await api.principal(request)
    row = await templates.get(api.ctx.db, _name(name))
    if row is None or (not row["enabled"] and not principal.is_admin):
        raise not_found("no such template")
    return api.ok(request, shapes.template(row))


async def create_template(api, request):
    principal = await api.admin(request)
    fields = validate_new(read_json(request))

    async def work(cursor):
        row = await templates.create(cursor, fields)
        if row is None:
            raise conflict("template_exists", f"a template named `{fields['name']}` exists")
        await api.audit(cursor, request, principal, "template.create", "template", row["name"])
        return row

    row = await api.ctx.db.transaction(work)
    request.setHeader(b"Location", f"/api/v1/templates/{row['name']}".encode())
    return api.ok(request, shapes.template(row), 201)


async def update_template(api, request, name):
    principal = await api.admin(request)
    name = _name(name)
    changes = validate(read_json(request), UPDATE_FIELDS, partial=True)

    async def work(cursor):
        current = await templates.get_for_update(cursor, name)
        if current is None:
            raise not_found("no such template")
        row = await templates.update(cursor, current["id"], changes)
        await api.audit(cursor, request, principal, "template.update", "template", name,
                        details={"changed": sorted(changes)})
        return row

    return api.ok(request, shapes.template(await api.ctx.db.transaction(work)))


async def delete_template(api, request, name):
    principal = await api.admin(request)
    name = _name(name)

    async def work(cursor):
        current = await templates.get_for_update(cursor, name)
        if current is None:
            raise not_found("no such template")
        in_use = await templates.count_sessions_using(cursor, current["id"],
                                                      (TERMINATED, FAILED))
        if in_use:
            raise conflict("template_in_use",
                           f"{in_use} session(s) use this template; disable it instead "
                           "(PATCH {\"enabled\": false}) or delete those sessions first")
        await templates.delete(cursor, current["id"])
        await api.audit(cursor, request, principal, "template.delete", "template", name)

    await api.ctx.db.transaction(work)
    return api.no_content(request)
