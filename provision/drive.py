"""Google Drive's share links, read to the file's bytes through its virus-scan confirm page.

gdown knows how to read Drive's confirm and quota pages (`get_url_from_gdrive_confirmation`),
but its hosts are fixed; this small flow asks the configured base (GDRIVE_ENDPOINT, default
https://drive.google.com) so tests and mirrors can stand in for Drive. Used by the Drive source
and by the config reader (a config shared from Drive): it sits below both.
"""

from __future__ import annotations

import os

import requests

from .http import TIMEOUT, read_capped
from .links import DEFAULT_GDRIVE_ENDPOINT, endpoint
from .retry import GaveUp, RetryPolicy, check_status, retrying

_MAX_PAGE_BYTES = 2 * 1024 * 1024


class DriveError(Exception):
    pass


def download_url(file_id: str) -> str:
    return (
        f"{endpoint(os.environ, 'GDRIVE_ENDPOINT', DEFAULT_GDRIVE_ENDPOINT)}/uc?id={file_id}&export=download"
    )


def open_drive_file(
    session: requests.Session,
    file_id: str,
    headers: dict[str, str] | None = None,
    retry: RetryPolicy | None = None,
) -> requests.Response:
    """A streaming response whose body is the file (it carries Content-Disposition). Network
    errors, 5xx and 429 are retried like any request (Drive answers them under load)."""
    result: list[requests.Response] = []
    try:
        retrying(
            retry or RetryPolicy.from_env(),
            f"Google Drive file {file_id}",
            lambda: result.append(_open_once(session, file_id, headers)),
            url=download_url(file_id),
        )
    except GaveUp as err:
        raise DriveError(str(err)) from None
    return result[0]


def _open_once(session: requests.Session, file_id: str, headers: dict[str, str] | None) -> requests.Response:
    url = download_url(file_id)
    for _attempt in range(2):  # the share URL, then at most one confirm form
        response = session.get(url, stream=True, timeout=TIMEOUT, headers=headers)
        check_status(response)  # 5xx and 429: Retryable
        if response.status_code == 404:
            response.close()
            raise DriveError(f"Google Drive file {file_id} not found: check the link")
        if response.status_code in (401, 403):
            response.close()
            raise DriveError(
                f"Google Drive refused file {file_id} ({response.status_code}): share it with"
                " 'Anyone with the link'"
            )
        if response.status_code >= 400:
            response.close()
            raise DriveError(f"Google Drive answered {response.status_code} for file {file_id}")
        if "Content-Disposition" in response.headers:
            return response
        try:
            page = read_capped(response, _MAX_PAGE_BYTES).decode("utf-8", "replace")
        except ValueError:
            raise DriveError(f"Google Drive sent an unexpected page for file {file_id}") from None
        finally:
            response.close()
        # gdown (with BeautifulSoup) is imported here, for a Drive page only: 5 MiB of memory
        # every run would carry otherwise (provision's peak is measured, see docs/downloads.md).
        from gdown.download import get_url_from_gdrive_confirmation
        from gdown.exceptions import FileURLRetrievalError

        try:
            url = get_url_from_gdrive_confirmation(page)
        except FileURLRetrievalError as err:
            message = str(err)
            if "Too many users" in message or "quota" in message.lower():
                raise DriveError(
                    f"Google Drive download quota exceeded for file {file_id}: {message} Wait a"
                    " few hours, or copy the file to your own Drive and share that copy"
                ) from None
            raise DriveError(
                f"Google Drive gave no download for file {file_id}: share it with 'Anyone with the link'"
            ) from None
    raise DriveError(f"Google Drive kept asking for confirmation for file {file_id}")
