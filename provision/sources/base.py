"""What every source module shares: the request context and the error a person can act on.
Its own module, so the sources import it without importing the dispatcher (sources/__init__)
that imports them."""

from __future__ import annotations

from dataclasses import dataclass, field

import requests

from ..failures import host_of
from ..http import TIMEOUT, UnsafeRedirect, new_session
from ..retry import GaveUp, RetryPolicy, check_status, retrying
from ..secrets import redact


class SourceError(Exception):
    """This item cannot be resolved; the message says what to do."""


@dataclass
class Context:
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: tuple[float, float] = TIMEOUT
    session: requests.Session = field(default_factory=new_session)

    def host_down(self, url: str) -> bool:
        """This run found the host of `url` unreachable (the breaker says why, to every item)."""
        return bool(self.retry.breaker and self.retry.breaker.down(host_of(url)))

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
