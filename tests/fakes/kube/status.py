"""Status objects and the apiserver's object validation, as real clients see them.

Every refusal is a `metav1.Status` JSON body with the real `reason`, `code` and message
wording (kubectl, the Python client and our driver all print `message`): 400 BadRequest,
401 Unauthorized, 403 Forbidden (RBAC, quota, admission), 404 NotFound, 409 AlreadyExists
and Conflict, 410 Expired/Gone, 415 UnsupportedMediaType, 422 Invalid with its causes.
Validation covers what the apiserver checks and kubernetes-validate cannot (name formats,
label values, selector matching the template), plus required fields.
"""

from __future__ import annotations

import re
from typing import Any

from tests.fakes.kube.store import Resource

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_KEY_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


class ApiStatus(Exception):
    """Raised by handlers; rendered as the Status body with its HTTP code."""

    def __init__(self, code: int, reason: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "message": self.message,
                                "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def success(resource: Resource, name: str, uid: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": resource.group, "kind": resource.plural,
                        "uid": uid}}


def _details(resource: Resource, name: str) -> dict[str, Any]:
    return {"name": name, "group": resource.group, "kind": resource.plural}


def not_found(resource: Resource, name: str) -> ApiStatus:
    return ApiStatus(404, "NotFound", f'{resource.qualified} "{name}" not found',
                     _details(resource, name))


def already_exists(resource: Resource, name: str) -> ApiStatus:
    return ApiStatus(409, "AlreadyExists", f'{resource.qualified} "{name}" already exists',
                     _details(resource, name))


def conflict(resource: Resource, name: str) -> ApiStatus:
    return ApiStatus(409, "Conflict",
                     f'Operation cannot be fulfilled on {resource.qualified} "{name}": the '
                     "object has been modified; please apply your changes to the latest "
                     "version and try again", _details(resource, name))


def forbidden(resource: Resource, name: str | None, user: str, verb: str,
              namespace: str | None, subresource: str | None = None) -> ApiStatus:
    what = f"{resource.qualified} \"{name}\"" if name else resource.qualified
    res = resource.plural + (f"/{subresource}" if subresource else "")
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    return ApiStatus(403, "Forbidden",
                     f'{what} is forbidden: User "{user}" cannot {verb} resource "{res}" in '
                     f'API group "{resource.group}"{where}', _details(resource, name or ""))


def unauthorized() -> ApiStatus:
    return ApiStatus(401, "Unauthorized", "Unauthorized")


def gone(message: str) -> ApiStatus:
    return ApiStatus(410, "Expired", message)


def bad_request(message: str) -> ApiStatus:
    return ApiStatus(400, "BadRequest", message)


def invalid(resource: Resource, name: str, causes: list[tuple[str, str]]) -> ApiStatus:
    """422 as the apiserver words it: `Kind "name" is invalid: [field: message, ...]`."""
    texts = [f"{field}: {message}" for field, message in causes]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    kind = resource.kind + (f".{resource.group}" if resource.group else "")
    details = _details(resource, name)
    details["causes"] = [{"reason": "FieldValueInvalid", "message": m, "field": f}
                         for f, m in causes]
    return ApiStatus(422, "Invalid", f'{kind} "{name}" is invalid: {joined}', details)


# -- validation -----------------------------------------------------------------------------


def _name_problem(resource: Resource, name: str) -> str | None:
    if resource.kind == "Service":
        if len(name) > 63 or not DNS1035_LABEL.match(name):
            return (f'Invalid value: "{name}": a DNS-1035 label must consist of lower case '
                    "alphanumeric characters or '-', start with an alphabetic character, and "
                    "end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex "
                    "used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
        return None
    if len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        return (f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of '
                "lower case alphanumeric characters, '-' or '.', and must start and end with "
                "an alphanumeric character (e.g. 'example.com', regex used for validation is "
                "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
    return None


def _labels_problems(where: str, labels: Any) -> list[tuple[str, str]]:
    out = []
    if labels is None:
        return out
    if not isinstance(labels, dict):
        return [(where, "Invalid value: must be a map")]
    for key, value in labels.items():
        name = key.split("/", 1)[-1]
        if len(name) > 63 or not LABEL_KEY_NAME.match(name):
            out.append((where, f'Invalid value: "{key}": name part must consist of '
                               "alphanumeric characters, '-', '_' or '.'"))
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            out.append((f"{where}", f'Invalid value: "{value}": a valid label must be an '
                                    "empty string or consist of alphanumeric characters, "
                                    "'-', '_' or '.', and must start and end with an "
                                    "alphanumeric character, at most 63 characters"))
    return out


def _pod_spec_problems(where: str, spec: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    containers = spec.get("containers") or []
    if not containers:
        out.append((f"{where}.containers", "Required value"))
    for i, c in enumerate(containers):
        if not c.get("name") or not DNS1123_LABEL.match(str(c.get("name"))):
            out.append((f"{where}.containers[{i}].name", "Required value"))
        if not c.get("image"):
            out.append((f"{where}.containers[{i}].image", "Required value"))
        for j, port in enumerate(c.get("ports") or []):
            if not 0 < int(port.get("containerPort") or 0) < 65536:
                out.append((f"{where}.containers[{i}].ports[{j}].containerPort",
                            "Invalid value: must be between 1 and 65535, inclusive"))
    return out


def validate(resource: Resource, obj: dict[str, Any]) -> None:
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    problems: list[tuple[str, str]] = []
    why = _name_problem(resource, name)
    if why:
        problems.append(("metadata.name", why))
    problems += _labels_problems("metadata.labels", meta.get("labels"))
    spec = obj.get("spec") or {}
    if resource.kind == "Deployment":
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        template_labels = ((spec.get("template") or {}).get("metadata") or {}).get(
            "labels") or {}
        if not selector:
            problems.append(("spec.selector", "Required value"))
        elif any(template_labels.get(k) != v for k, v in selector.items()):
            problems.append(("spec.template.metadata.labels",
                             f"Invalid value: {template_labels!r}: `selector` does not match "
                             "template `labels`"))
        problems += _labels_problems("spec.template.metadata.labels", template_labels)
        problems += _pod_spec_problems("spec.template.spec",
                                       (spec.get("template") or {}).get("spec") or {})
        if int(spec.get("replicas", 1)) < 0:
            problems.append(("spec.replicas", "Invalid value: must be greater than or "
                                              "equal to 0"))
    elif resource.kind == "Service":
        if not spec.get("ports"):
            problems.append(("spec.ports", "Required value"))
    elif resource.kind == "PersistentVolumeClaim":
        if not ((spec.get("resources") or {}).get("requests") or {}).get("storage"):
            problems.append(("spec.resources[storage]", "Required value"))
        if not spec.get("accessModes"):
            problems.append(("spec.accessModes", "Required value: at least 1 access mode "
                                                 "is required"))
    elif resource.kind == "Pod":
        problems += _pod_spec_problems("spec", spec)
    if problems:
        raise invalid(resource, name, problems)
