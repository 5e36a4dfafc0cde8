"""Request bodies and query strings: size cap, strict JSON, declarative field checks.

Every rule failure is a 400 naming the field; nothing reaches the database that it could
refuse with an error (NUL characters, lone surrogates, out-of-range integers, non-finite
numbers), so bad input never becomes a 500.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streamspace.api.errors import ApiError, bad_request

MAX_BODY_BYTES = 64 * 1024
MAX_DEPTH = 32
INT32_MAX = 2**31 - 1

_MISSING = object()


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


# No type, JSON, or curl's default for `-d` (the body must still be JSON). Tokens travel in
# the Authorization header, never in cookies, so accepting form types opens no CSRF hole.
_JSON_TYPES = (b"", b"application/json", b"application/x-www-form-urlencoded")


def read_json(request) -> dict[str, Any]:
    """The request's JSON object body (400/413/415 otherwise)."""
    length = request.getHeader(b"content-length")
    if length is not None:
        try:
            if int(length) > MAX_BODY_BYTES:
                raise _too_large()
        except ValueError:
            raise bad_request("invalid Content-Length") from None
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype not in _JSON_TYPES and not ctype.endswith(b"+json"):
        raise ApiError(415, "unsupported_media_type", "the body must be application/json")
    content = request.content
    if content is None:
        raw = b""
    else:
        content.seek(0)
        raw = content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise _too_large()
    if not raw.strip():
        raise bad_request("a JSON object body is required", "invalid_json")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = e.reason if isinstance(e, UnicodeDecodeError) else str(e).split(":")[0]
        raise bad_request(f"the body is not valid JSON ({reason})", "invalid_json") from None
    _check_clean(value, "body", 0)
    if not isinstance(value, dict):
        raise bad_request("the body must be a JSON object", "invalid_json")
    return value


def _too_large() -> ApiError:
    return ApiError(413, "payload_too_large",
                    f"the body is larger than {MAX_BODY_BYTES // 1024} KiB")


def _check_clean(value: Any, where: str, depth: int) -> None:
    """Refuse what PostgreSQL cannot store: NUL, lone surrogates, inf; and deep nesting."""
    if depth > MAX_DEPTH:
        raise bad_request(f"the body is nested more than {MAX_DEPTH} levels deep",
                          "invalid_json")
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise bad_request(f"{where}: numbers must be finite", "invalid_json")
    elif isinstance(value, list):
        for item in value:
            _check_clean(item, where, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _check_clean(item, f"`{key}`" if depth == 0 else where, depth + 1)


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise bad_request(f"{where}: text must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{where}: text must be valid Unicode (no lone surrogates)") from None


# --- fields ------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One body field: JSON type plus constraints. `check` returns the (clean) value."""

    kind: str  # string, integer, number, boolean, object, string_map
    required: bool = False
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    min_len: int | None = None
    max_len: int | None = None
    pattern: str | None = None
    pattern_help: str | None = None
    choices: tuple[str, ...] | None = None
    custom: Callable[[str, Any], Any] | None = None

    def check(self, name: str, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise bad_request(f"`{name}` must not be null")
        checker = _KINDS[self.kind]
        value = checker(self, name, value)
        if self.custom is not None:
            value = self.custom(name, value)
        return value


def _string(f: Field, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise bad_request(f"`{name}` must be a string")
    if f.min_len is not None and len(value) < f.min_len:
        raise bad_request(f"`{name}` must be at least {f.min_len} characters long"
                          if f.min_len > 1 else f"`{name}` must not be empty")
    if f.max_len is not None and len(value) > f.max_len:
        raise bad_request(f"`{name}` must be at most {f.max_len} characters long")
    if f.choices is not None and value not in f.choices:
        raise bad_request(f"`{name}` must be one of: {', '.join(f.choices)}")
    if f.pattern is not None and not re.fullmatch(f.pattern, value):
        raise bad_request(f"`{name}` {f.pattern_help or 'has an invalid format'}")
    return value


def _range(f: Field, name: str, value):
    if f.min is not None and value < f.min:
        raise bad_request(f"`{name}` must be at least {_num(f.min)}")
    if f.max is not None and value > f.max:
        raise bad_request(f"`{name}` must be at most {_num(f.max)}")
    return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _integer(f: Field, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"`{name}` must be an integer")
    return _range(f, name, value)


def _number(f: Field, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"`{name}` must be a number")
    return _range(f, name, value)


def _boolean(f: Field, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"`{name}` must be true or false")
    return value


def _object(f: Field, name: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise bad_request(f"`{name}` must be an object")
    if f.max_len is not None and len(value) > f.max_len:
        raise bad_request(f"`{name}` must have at most {f.max_len} entries")
    return value


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _string_map(f: Field, name: str, value: Any) -> dict[str, str]:
    """An environment: variable names to string values."""
    value = _object(f, name, value)
    for key, item in value.items():
        if not _ENV_NAME.fullmatch(key):
            raise bad_request(f"`{name}`: `{key[:64]}` is not a valid variable name")
        if not isinstance(item, str):
            raise bad_request(f"`{name}.{key}` must be a string")
        if len(item) > 4096:
            raise bad_request(f"`{name}.{key}` must be at most 4096 characters long")
    return value


_KINDS: dict[str, Callable[[Field, str, Any], Any]] = {
    "string": _string, "integer": _integer, "number": _number, "boolean": _boolean,
    "object": _object, "string_map": _string_map,
}


def validate(body: Mapping[str, Any], fields: Mapping[str, Field], *,
             partial: bool = False) -> dict[str, Any]:
    """Check `body` against `fields`: unknown fields, missing required ones and wrong
    types are 400s naming the field. `partial` (PATCH): nothing is required, but at least
    one field must be present."""
    unknown = sorted(set(body) - set(fields))
    if unknown:
        shown = ", ".join(f"`{k[:64]}`" for k in unknown[:5])
        raise bad_request(f"unknown field(s): {shown}; allowed: "
                          + ", ".join(sorted(fields)))
    out: dict[str, Any] = {}
    for name, field in fields.items():
        value = body.get(name, _MISSING)
        if value is _MISSING:
            if field.required and not partial:
                raise bad_request(f"`{name}` is required")
            continue
        out[name] = field.check(name, value)
    if partial and not out:
        raise bad_request("nothing to change: send at least one of "
                          + ", ".join(sorted(fields)))
    return out


# --- common values ------------------------------------------------------------------

USERNAME = r"[a-z0-9][a-z0-9._-]{0,62}"
USERNAME_HELP = ("must be 1-63 characters: lowercase letters, digits, `.`, `_`, `-`, "
                 "starting with a letter or digit")
SLUG = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
SLUG_HELP = "must be a slug: lowercase letters, digits and `-` (e.g. `firefox-browser`)"
AGENT_ID = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,254}"
AGENT_ID_HELP = "must be 1-255 characters: letters, digits, `.`, `_`, `:`, `-`"
PLATFORM = r"[a-z][a-z0-9-]{0,49}"
PLATFORM_HELP = "must be a platform name such as `local` or `kubernetes`"
REGION = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
REGION_HELP = "must be 1-100 characters: letters, digits, `.`, `_`, `-`"


def is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower() and len(text) == 36
    except (ValueError, AttributeError, TypeError):
        return False


# --- query strings ------------------------------------------------------------------

def query(request, name: str) -> str | None:
    """The last value of query parameter `name`, decoded and checked clean (or None)."""
    values = request.args.get(name.encode())
    if not values:
        return None
    raw = values[-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"query parameter `{name}` is not valid UTF-8") from None
    _check_text(text, f"query parameter `{name}`")
    if len(text) > 1024:
        raise bad_request(f"query parameter `{name}` is too long")
    return text


def query_matching(request, name: str, pattern: str, help_text: str) -> str | None:
    value = query(request, name)
    if value is not None and not re.fullmatch(pattern, value):
        raise bad_request(f"query parameter `{name}` {help_text}")
    return value


def query_choice(request, name: str, choices) -> str | None:
    value = query(request, name)
    if value is not None and value not in choices:
        raise bad_request(f"query parameter `{name}` must be one of: {', '.join(choices)}")
    return value


def query_bool(request, name: str) -> bool | None:
    value = query(request, name)
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise bad_request(f"query parameter `{name}` must be true or false")


def query_int(request, name: str, *, default: int, low: int, high: int) -> int:
    value = query(request, name)
    if value is None:
        return default
    if not re.fullmatch(r"[0-9]{1,18}", value):  # \d would take any script's digits
        raise bad_request(f"query parameter `{name}` must be a whole number")
    number = int(value)
    if not low <= number <= high:
        raise bad_request(f"query parameter `{name}` must be between {low} and {high}")
    return number


def query_time(request, name: str) -> datetime | None:
    value = query(request, name)
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.replace(" ", "+"))
    except ValueError:
        raise bad_request(f"query parameter `{name}` must be an ISO 8601 time, "
                          "e.g. 2026-01-31T12:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        # In UTC: PostgreSQL refuses offsets with seconds, and an offset can carry a
        # time past year 9999 or before 1970 once applied.
        when = when.astimezone(UTC)
    except (OverflowError, ValueError):
        raise bad_request(f"query parameter `{name}` is out of range") from None
    if not 1970 <= when.year <= 9999:
        raise bad_request(f"query parameter `{name}` is out of range")
    return when
