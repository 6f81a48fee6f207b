"""Model categories and the folders SD.Next reads them from, as sdnext_pin.toml records them
for the pinned tag (the same file Nix reads for SD.Next's source)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class Category:
    name: str
    folder: str  # relative to the models root ($WORKSPACE/sdnext/models)
    what: str
    warning: str | None = None  # set when SD.Next at the pin may not load this category
    removed: str | None = None  # set when SD.Next at the pin has no such folder: refused, and why


def _pinned() -> dict:
    """sdnext_pin.toml: the SD.Next tag this project pins and what belongs to that tag."""
    return tomllib.loads(resources.files(__package__).joinpath("sdnext_pin.toml").read_text())


PIN = _pinned()
CATEGORIES: dict[str, Category] = {
    name: Category(name, entry["folder"], entry["what"], entry.get("warning"), entry.get("removed"))
    for name, entry in PIN["categories"].items()
}
ALIASES: dict[str, str] = dict(PIN.get("aliases", {}))


def lookup(name: str) -> Category | None:
    """The category for a config name or alias, or None when unknown."""
    return CATEGORIES.get(ALIASES.get(name, name))


def valid_names() -> list[str]:
    return sorted([*CATEGORIES, *ALIASES])


def folders() -> list[str]:
    """Every folder the runtime creates under the models root (none for a removed category)."""
    return sorted({c.folder for c in CATEGORIES.values() if not c.removed})
