"""Examples in the docs that operators copy must work as written: every admin password
they show meets the password policy (a short one makes the control plane refuse to start,
ADMIN_PASSWORD being checked at start-up)."""

from __future__ import annotations

import re

from streamspace.auth.password_policy import password_problem
from tests.support.processes import REPO

# ADMIN_PASSWORD=x, --set adminPassword=x, adminPassword: x, "password": "x" for admin
EXAMPLE = re.compile(r"(?:ADMIN_PASSWORD|adminPassword)\s*[=:]\s*([^\s`'\"|)]+)")


def _documents():
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
                 *sorted((REPO / "deploy").rglob("*.md")),
                 *sorted((REPO / "deploy" / "helm").rglob("*.yaml")),
                 *sorted((REPO / "deploy" / "helm").rglob("*.txt"))]:
        yield path.relative_to(REPO), path.read_text()


def test_every_admin_password_shown_in_the_docs_meets_the_policy():
    weak = []
    for name, text in _documents():
        for value in EXAMPLE.findall(text):
            if value.startswith("$") or value in ('""', "''", "{{"):
                continue  # generated in the example itself, or a template
            problem = password_problem(value, "admin")
            if problem:
                weak.append(f"{name}: {value!r}: {problem}")
    assert not weak, weak


def test_the_pattern_finds_the_examples_operators_copy():
    assert EXAMPLE.findall("ADMIN_PASSWORD=choose-one\n--set adminPassword=s3cret ") == [
        "choose-one", "s3cret"]
