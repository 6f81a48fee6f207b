"""Keep secrets out of everything a person or a log can read.

Every token the tool knows of is registered here; `redact` replaces each with `***` and also
masks `token=`-style query parameters and `user:password@` in URLs, whatever their value.
The logging filter applies it to every record, so a message never has to remember to.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from urllib.parse import urlsplit, urlunsplit

# Environment variables whose values are secrets wherever they show up.
SECRET_ENV_VARS = ("HF_TOKEN", "CIVITAI_TOKEN", "GITHUB_TOKEN", "PASSWORD", "OPEN_BUTTON_TOKEN")

_MASK = "***"
_lock = threading.Lock()
_known: set[str] = set()

_SECRET_PARAMS = (
    "token|access_token|api_key|apikey|key|sig|signature|x-amz-signature"
    "|x-amz-credential|x-amz-security-token|auth|password"
)
_QUERY_SECRET = re.compile(rf"(?i)([?&;](?:{_SECRET_PARAMS})=)[^&#\s\"']+")
_SECRET_PARAM = re.compile(rf"(?i)^(?:{_SECRET_PARAMS})$")
_URL_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/@\s\"']+@")


def register_secret(value: str | None) -> None:
    """Remember a value that must never be shown (short values would mask too much)."""
    if value and len(value) >= 4:
        with _lock:
            _known.add(value)


def register_env_secrets(env: dict[str, str] | os._Environ | None = None) -> None:
    env = os.environ if env is None else env
    for name in SECRET_ENV_VARS:
        register_secret(env.get(name))


def without_secrets(url: str) -> str:
    """A URL fit to be written down for good (a lock file): secret query parameters and
    `user:password@` removed, not masked, and any known secret value masked."""
    parts = urlsplit(url)
    query = "&".join(
        pair for pair in parts.query.split("&") if pair and not _SECRET_PARAM.match(pair.split("=", 1)[0])
    )
    netloc = parts.netloc.rpartition("@")[2]
    return redact(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def redact(text: str) -> str:
    if not text:
        return text
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, _MASK)
    text = _QUERY_SECRET.sub(lambda m: m.group(1) + _MASK, text)
    return _URL_USERINFO.sub(lambda m: m.group(1) + _MASK + "@", text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's final message with `redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            # The traceback text is rendered later by the formatter: render and clean it now.
            cleaned += "\n" + redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = cleaned, None
        return True
