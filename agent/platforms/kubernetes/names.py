"""Kubernetes names and label values for sessions, valid whatever users and templates are
called.

Object names must be DNS-1123 labels (lower case alphanumerics and '-', at most 63
characters, alphanumeric at both ends); label values at most 63 characters of
[A-Za-z0-9._-], alphanumeric at both ends. Like kubespawner, a value that is already valid
is kept as it is (readable in `kubectl get`), and anything else becomes a readable prefix
plus a hash of the original, so two different inputs never map to one name (the escape
schemes of old produced invalid or colliding names: kubespawner #97, #498).
"""

from __future__ import annotations

import hashlib
import re

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
MAX_LABEL = 63
# Pods of a Deployment are named <deployment>-<10 hash>-<5 random>: keep room for that.
MAX_WORKLOAD_NAME = 47

PREFIX = "ss"


def digest(text: str, length: int = 10) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _slug(text: str) -> str:
    """Lower case, every run of other characters one '-', no '-' at the ends."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def label_value(text: str) -> str:
    """`text` if it is a valid label value, else a readable prefix plus its hash."""
    if len(text) <= MAX_LABEL and LABEL_VALUE.match(text):
        return text
    head = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:MAX_LABEL - 11].strip("-_.")
    return f"{head}-{digest(text)}" if head else digest(text)


def object_name(*parts: str, unique: str, limit: int = MAX_WORKLOAD_NAME) -> str:
    """`ss-<parts...>-<hash of unique>`, shortened to `limit`, always a DNS-1123 label.

    The hash of `unique` (a session id, or user id + template) makes the name unique;
    the parts are only there for people reading `kubectl get`.
    """
    suffix = digest(unique)
    readable = "-".join(p for p in (_slug(part) for part in parts) if p)
    room = limit - len(PREFIX) - len(suffix) - 2
    readable = readable[:max(room, 0)].strip("-")
    name = "-".join(p for p in (PREFIX, readable, suffix) if p)
    assert DNS1123_LABEL.match(name) and len(name) <= limit, name
    return name


def session_name(session_id: str, username: str, template: str) -> str:
    """The Deployment's and Service's name for one session."""
    return object_name(username, template, unique=f"session:{session_id}")


def home_claim_name(user_id: str, username: str, template: str) -> str:
    """The PVC of one user's persistent home for one template (shared by their sessions)."""
    return object_name("home", username, template, unique=f"home:{user_id}:{template}",
                       limit=MAX_LABEL)
