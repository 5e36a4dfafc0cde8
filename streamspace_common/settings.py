"""Declarative settings shared by the control plane and the agent.

Each setting is a command-line option with an environment-variable fallback, so
`twistd <plugin> --help` documents both and containers can be configured either way.
Parsing collects every problem before reporting, so an operator fixes them all at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.python import usage


class ConfigError(SystemExit):
    """Every configuration problem found, one per entry in `problems`.

    A `SystemExit`, so twistd exits non-zero printing just this message (no traceback,
    no usage dump) while tests can still catch it by type.
    """

    def __init__(self, problems: list[str], program: str = "streamspace") -> None:
        self.problems = problems
        super().__init__(f"{program}: {self.render()}")

    def render(self) -> str:
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Parse `30`, `30s`, `5m`, `1.5h`, `250ms` into seconds (the seed writes `30s`, `5m`)."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration (examples: 30s, 5m, 1h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be greater than zero")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a port number (0-65535)")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise ValueError(f"{value} must not be negative")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise ValueError("must be at least 1")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not a number") from None
    if value < 0:
        raise ValueError(f"{value} must not be negative")
    return value


LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


def log_level(text: str) -> str:
    value = str(text).strip().lower()
    if value == "warning":
        value = "warn"
    if value not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return value


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = str(text).strip().lower()
        if value not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return value

    return parse


def text(value: str) -> str:
    return str(value)


@dataclass(frozen=True)
class Setting:
    """One option: `--name`, its environment variable, default, parser and help."""

    name: str
    env: str | None
    default: str | None
    help: str
    parse: Callable[[str], Any] = text
    secret: bool = False

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")


def build_options_class(
    settings: list[Setting],
    flags: list[tuple[str, str | None, str]],
    validate: Callable[[dict[str, Any], Mapping[str, str]], list[str]] | None = None,
    doc: str = "",
    program_name: str = "streamspace",
) -> type[usage.Options]:
    """Make a `usage.Options` subclass whose values fall back to the environment.

    The resulting options object behaves like a dict of *parsed* values after
    `parseOptions()`; problems are raised together as one `ConfigError`.
    """

    params = []
    for s in settings:
        env_note = f" [env: {s.env}]" if s.env else ""
        default_note = f" (default: {s.default})" if s.default not in (None, "") else ""
        params.append([s.name, None, None, f"{s.help}{default_note}{env_note}"])
    flag_specs = []
    for name, env, help_text in flags:
        env_note = f" [env: {env}=1]" if env else ""
        flag_specs.append([name, None, f"{help_text}{env_note}"])

    class Options(usage.Options):
        __doc__ = doc
        optParameters = params
        optFlags = flag_specs
        _settings = settings
        _flags = flags
        program = program_name

        def __init__(self, environ: Mapping[str, str] | None = None) -> None:
            super().__init__()
            import os

            self.environ = os.environ if environ is None else environ

        def postOptions(self) -> None:
            problems: list[str] = []
            for s in self._settings:
                raw = self[s.name]
                source = f"--{s.name}"
                if raw is None and s.env and self.environ.get(s.env, "") != "":
                    raw = self.environ[s.env]
                    source = s.env
                if raw is None:
                    raw = s.default
                if raw is None:
                    self[s.attr] = None
                    continue
                try:
                    self[s.attr] = s.parse(raw)
                except ValueError as e:
                    self[s.attr] = None
                    problems.append(f"{source}: {e}")
            for name, env, _ in self._flags:
                on = bool(self[name])
                if not on and env:
                    on = self.environ.get(env, "").strip().lower() in ("1", "true", "yes", "on")
                self[name.replace("-", "_")] = on
            if validate is not None and not problems:
                problems.extend(validate(self, self.environ))
            if problems:
                raise ConfigError(problems, self.program)

    return Options
