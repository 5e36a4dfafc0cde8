"""The default template catalog (catalog/templates.json), loaded on first start."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.logger import Logger

from streamspace.api.errors import ApiError
from streamspace.api.templates import validate_new
from streamspace.db import templates
from streamspace.db.pool import Database

log = Logger()

DEFAULT_CATALOG = Path(__file__).resolve().parents[2] / "catalog" / "templates.json"


class CatalogError(ValueError):
    """The catalog file is unreadable or a template in it is invalid."""


def load_catalog(path: Path = DEFAULT_CATALOG) -> list[dict]:
    """Read and validate the catalog with the API's own template rules (at start-up,
    before the reactor runs; a bad catalog is a configuration error)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CatalogError(f"template catalog {path}: {e}") from None
    entries = data.get("templates") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise CatalogError(f"template catalog {path}: expected a `templates` list")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise CatalogError(f"template catalog {path}: entry {i} is not an object")
        try:
            out.append(validate_new(entry))
        except ApiError as e:
            raise CatalogError(f"template catalog {path}: entry {i} "
                               f"({entry.get('name', '?')}): {e.message}") from None
    return out


def catalog_hook(entries: list[dict]):
    """A DatabaseService start-up hook inserting `entries` when no template exists yet."""

    async def hook(db: Database) -> None:
        inserted = await templates.load_catalog_if_empty(db, entries)
        if inserted:
            log.info("loaded the default template catalog: {names}",
                     names=", ".join(inserted))

    return hook
