"""The OpenAPI document matches the routes exactly (responses are checked by the client in
every other test), and metrics label API requests by route template."""

from __future__ import annotations

import re

import pytest_twisted
from jsonschema import Draft202012Validator
from werkzeug.routing import Map

from streamspace.api.app import ROUTES, Api
from streamspace.api.openapi import document
from streamspace.web import API_PREFIX, ControlPlaneWeb, route_resolver


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def _methods(rule) -> set[str]:
    return (rule.methods or {"GET"}) - {"HEAD", "OPTIONS"}  # None: a WebSocket upgrade


def test_every_route_is_documented_and_nothing_else():
    """The API's own routes plus those the root serves under /api/v1 (session events,
    vnc-token, the WebSockets): each documented, and nothing documented that is not served."""
    doc = document()
    served = {(_openapi_path(rule.rule), method.lower())
              for rule in Api.app.url_map.iter_rules() for method in _methods(rule)}
    assert len(served) == len(ROUTES)
    for rule in ControlPlaneWeb.app.url_map.iter_rules():
        if rule.rule.startswith(API_PREFIX + "/") and "branch" not in rule.endpoint:
            served |= {(_openapi_path(rule.rule[len(API_PREFIX):]), m.lower())
                       for m in _methods(rule)}
    documented = {(path, method) for path, item in doc["paths"].items()
                  for method in item if method != "parameters"}
    assert served == documented


def test_document_is_well_formed():
    doc = document()
    assert doc["openapi"] == "3.1.0" and doc["servers"] == [{"url": "/api/v1"}]
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)  # raises, naming the bad part
    for path, item in doc["paths"].items():
        names = set(re.findall(r"\{([a-z_]+)\}", path))
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert names == declared, path
        for method, op in item.items():
            if method == "parameters":
                continue
            assert op["summary"] and op["responses"]["default"], (path, method)
            assert any(code[0] == "2" or code == "101" for code in op["responses"]), path
            for ref in re.findall(r"#/components/schemas/(\w+)", str(op)):
                assert ref in doc["components"]["schemas"], ref


def test_request_schemas_follow_the_validators():
    """Bodies the API accepts validate against the documented request schema."""
    doc = document()
    schema = {"$ref": "#/components/schemas/TemplateCreate", "components": doc["components"]}
    validator = Draft202012Validator(schema)
    assert validator.is_valid({"name": "firefox-browser", "cpu": 1.5,
                               "platforms": {"local": {"command": "x"}}})
    assert not validator.is_valid({"name": "Bad Name"})
    assert not validator.is_valid({"name": "ok", "unknown": 1})


@pytest_twisted.ensureDeferred
async def test_served_document(client):
    r = await client.get("/api/v1/openapi.json")
    assert r.status == 200 and r.json == document()


def test_metrics_label_api_routes_by_template():
    route_of = route_resolver(ControlPlaneWeb.app.url_map, Api.app.url_map)
    assert route_of("/api/v1/sessions/1234", "GET") == "/api/v1/sessions/<session_id>"
    assert route_of("/api/v1/agents/register", "POST") == "/api/v1/agents/register"
    assert route_of("/api/v1/agents/k8s-1/token", "POST") == "/api/v1/agents/<agent_id>/token"
    assert route_of("/api/v1/nope/x/y", "GET") == "unmatched"
    assert isinstance(Api.app.url_map, Map)
