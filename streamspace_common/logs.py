"""Log observers for twistd: LOG_LEVEL filtering on top of twisted.logger.

twistd starts logging after `makeService`, so the plugins record the configured level
here and `twistd --logger=streamspace_common.logs.observer` builds the filtered observer.
Without `--logger` twistd's default observer logs everything, unfiltered.
"""

from __future__ import annotations

import os
import sys

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

_configured: str | None = None

# Never let these event keys reach a log line (belt and braces: code should not log them).
SECRET_KEYS = ("password", "token", "secret", "jwt", "authorization")


def set_level(level: str) -> None:
    """Remember the configured level; the observer built later by twistd applies it."""
    global _configured
    _configured = level


def level() -> LogLevel:
    name = _configured or os.environ.get("LOG_LEVEL", "info").lower()
    return _LEVELS.get("warn" if name == "warning" else name, LogLevel.info)


def _redact(event: dict) -> dict:
    if any(k in event for k in SECRET_KEYS):
        event = dict(event)
        for k in SECRET_KEYS:
            if k in event:
                event[k] = "<redacted>"
    return event


def observer() -> ILogObserver:
    """twistd `--logger` factory: text lines on stdout, filtered by LOG_LEVEL."""
    text = textFileLogObserver(sys.stdout)
    predicate = LogLevelFilterPredicate(defaultLogLevel=level())

    def redacting(event: dict) -> None:
        text(_redact(event))

    return FilteringLogObserver(redacting, [predicate])
