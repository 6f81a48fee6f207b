"""Retries with exponential backoff and jitter, shared by API calls and the download engine."""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
import urllib3.exceptions

from .secrets import redact

log = logging.getLogger("provision")


class Retryable(Exception):
    """A failure worth another try (a 5xx or 429 answer); may carry the server's Retry-After."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class GaveUp(Exception):
    """Every try failed; the message names the last failure."""


TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
    Retryable,
)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8  # per request, counting the first
    base: float = 1.0  # seconds before the first retry, doubled each time
    cap: float = 60.0
    max_retry_after: float = 300.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """PROVISION_RETRY_BASE / PROVISION_RETRY_ATTEMPTS tune it (mirrors, tests)."""
        base = float(os.environ.get("PROVISION_RETRY_BASE", cls.base))
        attempts = int(os.environ.get("PROVISION_RETRY_ATTEMPTS", cls.attempts))
        return cls(attempts=max(1, attempts), base=max(0.0, base), cap=max(base, cls.cap))

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        backoff = min(self.cap, self.base * 2 ** (attempt - 1))
        return backoff * random.uniform(0.5, 1.0)  # "equal jitter": spreads many clients' retries


def retrying(
    policy: RetryPolicy, what: str, attempt_fn: Callable[[], None], stop: threading.Event | None = None
) -> None:
    """Call attempt_fn until it returns; transient errors are retried, others pass through."""
    for attempt in range(1, policy.attempts + 1):
        try:
            attempt_fn()
            return
        except TRANSIENT as err:
            if attempt == policy.attempts:
                raise GaveUp(f"gave up after {attempt} attempts: {redact(describe(err))}") from None
            if stop is not None and stop.is_set():
                return
            delay = policy.delay(attempt, getattr(err, "retry_after", None))
            log.info(f"{what}: {redact(describe(err))}; retry {attempt} in {delay:.1f}s")
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


_UNREACHABLE = re.compile(r"host='([^']+)', port=(\d+)")


def describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    host = _UNREACHABLE.search(text)
    if isinstance(err, requests.ConnectionError) and host and "NewConnectionError" in text:
        why = (
            "no such host"
            if "resolve" in text.lower()
            else "connection refused"
            if "refused" in text
            else "no route"
        )
        return f"cannot reach {host[1]}:{host[2]} ({why}): check the network and the URL"
    # requests reports a read timeout inside a body as a ConnectionError: look at the text too.
    if isinstance(err, requests.Timeout | urllib3.exceptions.ReadTimeoutError) or "timed out" in text:
        return f"stalled or timed out ({text})"
    return text
