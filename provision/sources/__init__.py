"""Sources: turn a planned Item into Downloads (URL, destination, size, checksum, headers).

Each source module has `resolve(item, ctx) -> list[Download]` and raises SourceError with a
message a person can act on. Only metadata travels here (HEAD or API calls); the bytes are the
engine's job.
"""

from __future__ import annotations

import importlib
import os

from ..download import Download
from ..plan import CivitaiSpec, GDriveSpec, HuggingFaceSpec, Item, UrlSpec
from .base import Context, SourceError

__all__ = ["Context", "SourceError", "check_tokens", "resolve"]


def resolve(item: Item, ctx: Context) -> list[Download]:
    if item.locked is not None:  # the lock says which files: no metadata to ask for
        from . import locked

        return locked.resolve(item, ctx)
    # Imported on first use: huggingface_hub costs memory and start-up time a URL-only run skips.
    module_name = {
        HuggingFaceSpec: "huggingface",
        CivitaiSpec: "civitai",
        UrlSpec: "url",
        GDriveSpec: "gdrive",
    }
    module = importlib.import_module(f".{module_name[type(item.spec)]}", __name__)
    return module.resolve(item, ctx)


def check_tokens(items: list[Item], ctx: Context) -> dict[str, str]:
    """Check each token once, for the sources the plan uses: {source: problem} for bad ones."""
    problems = {}
    sources = {item.source for item in items}
    if "huggingface" in sources and os.environ.get("HF_TOKEN"):
        from . import huggingface  # huggingface_hub is a heavy import: only when needed

        problem = huggingface.check_token(ctx)
        if problem:
            problems["huggingface"] = problem
    if "civitai" in sources and os.environ.get("CIVITAI_TOKEN"):
        from . import civitai

        problem = civitai.check_token(ctx)
        if problem:
            problems["civitai"] = problem
    return problems
