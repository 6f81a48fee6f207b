"""Read the config text from a path, an http(s) URL or a Google Drive link.

Remote configs are small: the body is capped at 1 MiB, every request has finite timeouts, and
an answer that is not TOML (a login page, a Drive preview, a 404 page) is refused with a
message that says what the URL returned instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import requests

from . import links
from .config import ConfigError, ConfigUnreachable, parse_toml
from .drive import open_drive_file
from .failures import classify
from .http import TIMEOUT, new_session, read_capped
from .secrets import redact

MAX_CONFIG_BYTES = 1024 * 1024
# A config arrives in seconds; one that trickles in (each byte inside the read timeout) is given
# up after this many seconds in all. PROVISION_CONFIG_DEADLINE changes it (tests, slow links).
CONFIG_DEADLINE = 60.0


def is_remote(source: str) -> bool:
    return "://" in source


def read_config(source: str, *, offline: bool = False) -> tuple[str, str]:
    """The TOML text and a printable (redacted) name of where it came from."""
    if not is_remote(source):
        return _read_file(Path(source)), source
    shown = redact(source)
    scheme = urlsplit(source).scheme
    if scheme not in ("http", "https"):
        raise ConfigError([f"{shown}: only http(s) URLs or local paths can be read as config"])
    if offline:
        raise ConfigError(
            [f"{shown}: --offline makes no network request; download the config and pass its path"]
        )
    with new_session() as session:
        file_id = links.gdrive_file_id(source)
        if file_id is not None:
            try:
                response = open_drive_file(session, file_id)
            except Exception as err:  # DriveError: Drive's own answer, already explained
                raise ConfigUnreachable([f"the config {shown}: {redact(str(err))}"]) from None
        else:
            response = _get(session, source, shown)
        with response:
            body = _read_body(response, shown)
    text = _decode(body, shown)
    _check_is_toml(text, shown, response.headers.get("Content-Type", ""))
    return text, shown


def _read_file(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a folder, not a config file"]) from None
    except OSError as err:
        raise ConfigError([f"{path}: cannot read the config: {err.strerror}"]) from None
    return _decode(data, str(path))


def _get(session: requests.Session, url: str, shown: str) -> requests.Response:
    try:
        response = session.get(url, stream=True, timeout=TIMEOUT)
    except requests.RequestException as err:
        raise ConfigUnreachable([f"the config {shown}: {_reason(err, url)}"]) from None
    if response.status_code != 200:
        response.close()
        raise ConfigError(
            [
                f"{shown}: the server answered {response.status_code} {response.reason}: "
                "check the URL, and that the file is public or the link carries its access key"
            ]
        )
    return response


def _read_body(response: requests.Response, shown: str) -> bytes:
    try:
        deadline = float(os.environ.get("PROVISION_CONFIG_DEADLINE", CONFIG_DEADLINE))
        return read_capped(response, MAX_CONFIG_BYTES, deadline=deadline)
    except ValueError:
        raise ConfigError(
            [f"{shown}: the answer is larger than {MAX_CONFIG_BYTES // 1024} KiB: not a config file"]
        ) from None
    except requests.RequestException as err:
        raise ConfigUnreachable([f"the config {shown}: {_reason(err, response.url)}"]) from None


def _decode(data: bytes, shown: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError([f"{shown}: not UTF-8 text, so not a TOML config"]) from None


def _check_is_toml(text: str, shown: str, content_type: str) -> None:
    head = text.lstrip()[:200].lower()
    if head.startswith(("<!doctype", "<html", "<?xml", "<head")) or "text/html" in content_type:
        raise ConfigError(
            [
                f"{shown}: the URL returned an HTML page (a login, preview or error page), not TOML:"
                " use a raw/direct download link (on GitHub the 'Raw' button, on Drive a file"
                " shared with 'Anyone with the link')"
            ]
        )
    parse_toml(text, shown)


def _reason(err: Exception, url: str) -> str:
    """The one style of failures.Failure (host, reason, what to check), never requests' text."""
    failure = classify(err, url)
    if failure is None and type(err).__module__.startswith("provision"):
        return redact(str(err))  # our own refusals (a redirect to ftp:, a config that trickles) say why
    if failure is None:
        return "the request failed: check the URL and run again"
    return redact(failure.message(1))


def default_source() -> str | None:
    return os.environ.get("PROVISION_URL") or None
