"""Retries with exponential backoff and jitter, shared by API calls and the download engine."""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import requests

from .failures import HostBreaker, Retryable, classify, host_of
from .secrets import redact

log = logging.getLogger("provision")
__all__ = ["GaveUp", "RetryPolicy", "Retryable", "check_status", "retrying"]


class GaveUp(Exception):
    """Every try failed; the message names the last failure."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8  # per request, counting the first (a host that cannot be reached: 2 at most)
    base: float = 1.0  # seconds before the first retry, doubled each time
    cap: float = 60.0
    max_retry_after: float = 300.0
    # The run's record of dead hosts (failures.HostBreaker), shared by every request of one run.
    breaker: HostBreaker | None = field(default=None, compare=False)

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """PROVISION_RETRY_BASE / PROVISION_RETRY_ATTEMPTS tune it (mirrors, tests)."""
        base = float(os.environ.get("PROVISION_RETRY_BASE", cls.base))
        attempts = int(os.environ.get("PROVISION_RETRY_ATTEMPTS", cls.attempts))
        return cls(attempts=max(1, attempts), base=max(0.0, base), cap=max(base, cls.cap))

    def for_one_run(self) -> RetryPolicy:
        """The same policy with a breaker of its own: what one run learns about dead hosts."""
        return replace(self, breaker=HostBreaker())

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        backoff = min(self.cap, self.base * 2 ** (attempt - 1))
        return backoff * random.uniform(0.5, 1.0)  # "equal jitter": spreads many clients' retries


def retrying(
    policy: RetryPolicy,
    what: str,
    attempt_fn: Callable[[], None],
    stop: threading.Event | None = None,
    url: str | None = None,
) -> None:
    """Call attempt_fn until it returns. Network failures are retried as failures.classify says
    (a dead host once at most, and then never again in this run: the breaker); anything else
    passes through. GaveUp says why, in the one style of failures.Failure.message."""
    breaker = policy.breaker
    for attempt in range(1, policy.attempts + 1):
        known = breaker.down(host_of(url)) if breaker else None
        if known:
            raise GaveUp(known)
        try:
            attempt_fn()
            return
        except Exception as err:
            failure = classify(err, url)
            if failure is None:
                raise
            limit = policy.attempts if failure.retries is None else min(policy.attempts, failure.retries + 1)
            if attempt >= limit:
                message = redact(failure.message(attempt))
                if breaker and failure.host_down:
                    breaker.trip(failure.host, message)  # type: ignore[arg-type]
                raise GaveUp(message) from None
            if stop is not None and stop.is_set():
                return
            delay = policy.delay(attempt, failure.retry_after)
            # An unreachable host is said once: the requests under way would each say it again.
            said = breaker and failure.host_down and not breaker.suspect(failure.host)  # type: ignore[arg-type]
            line = f"{what}: {redact(failure.reason)}; retry {attempt} in {delay:.1f}s"
            (log.debug if said else log.info)(line)
            if stop is not None:
                if stop.wait(delay):
                    return
            else:
                time.sleep(delay)


def check_status(response: requests.Response) -> None:
    """Raise Retryable for 429 and 5xx answers (closing the response)."""
    status = response.status_code
    if status == 429 or status >= 500:
        response.close()
        raise Retryable(f"HTTP {status}", retry_after(response))


def retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None
