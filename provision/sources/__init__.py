"""Sources: turn a planned Item into Downloads (URL, destination, size, checksum, headers).

Each source module has `resolve(item, ctx) -> list[Download]` and raises SourceError with a
message a person can act on. Only metadata travels here (HEAD or API calls); the bytes are the
engine's job.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

import requests

from ..download import Download
from ..http import TIMEOUT, UnsafeRedirect, new_session
from ..plan import CivitaiSpec, GDriveSpec, HuggingFaceSpec, Item, UrlSpec
from ..retry import GaveUp, RetryPolicy, check_status, retrying
from ..secrets import redact


class SourceError(Exception):
    """This item cannot be resolved; the message says what to do."""


@dataclass
class Context:
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: tuple[float, float] = TIMEOUT
    session: requests.Session = field(default_factory=new_session)

    def get(self, url: str, *, headers: dict[str, str] | None = None, method: str = "GET", **kw):
        """One request with retries on transient failures; the answer may be any status."""
        result: list[requests.Response] = []

        def attempt() -> None:
            response = self.session.request(method, url, headers=headers, timeout=self.timeout, **kw)
            check_status(response)
            result.append(response)

        try:
            retrying(self.retry, redact(url.split("?")[0]), attempt, url=url)
        except GaveUp as err:
            raise SourceError(str(err)) from None
        except UnsafeRedirect as err:
            raise SourceError(f"{redact(url)}: {err}") from None
        return result[0]


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
