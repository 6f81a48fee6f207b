"""Plain URLs: optional headers, optional sha256 and size from the config (checked like a
published checksum); the name from the item, else Content-Disposition (RFC 6266, `filename*`
first), else the URL's path. Always reduced to a safe base name."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import requests

from ..download import Checksum, Download
from ..paths import safe_filename
from ..plan import Item, UrlSpec
from ..secrets import redact, without_secrets
from .base import Context, SourceError


def resolve(item: Item, ctx: Context) -> list[Download]:
    spec: UrlSpec = item.spec  # type: ignore[assignment]
    response = _head(spec, ctx)
    with response:
        if response.status_code >= 400:
            raise SourceError(explain(response.status_code, spec.url) or f"HTTP {response.status_code}")
        name = (
            item.filename
            or safe_filename(filename_from_disposition(response.headers.get("Content-Disposition")))
            or safe_filename(unquote(PurePosixPath(urlsplit(spec.url).path).name))
            or safe_filename(item.name)
        )
        size = _size(response)
        pin = {
            "url": without_secrets(spec.url),
            "final_url": without_secrets(response.url) if response.url != spec.url else None,
            "etag": response.headers.get("ETag"),
            "last_modified": response.headers.get("Last-Modified"),
        }
    if spec.size is not None and size is not None and size != spec.size:
        raise SourceError(
            f"{redact(spec.url)} offers {size} bytes, but the config says size = {spec.size}: "
            "check the URL, or fix size (and sha256)"
        )
    download = file_download(spec, item.folder / name, {k: v for k, v in pin.items() if v})  # type: ignore[operator]
    download.size = spec.size if spec.size is not None else size
    download.checksum = Checksum("sha256", spec.sha256) if spec.sha256 else None
    return [download]


def file_download(spec: UrlSpec, dest: Path, pin: dict[str, str | int]) -> Download:
    """The config's URL with its headers (resolved now, or as a lock pins it)."""
    return Download(
        url=spec.url,
        dest=dest,
        headers=dict(spec.headers),
        identity=f"url:{redact(spec.url)}" + (f"#sha256={spec.sha256}" if spec.sha256 else ""),
        pin=pin,
        explain=lambda status: explain(status, spec.url),
    )


def _head(spec: UrlSpec, ctx: Context) -> requests.Response:
    """HEAD for the name and size; servers that refuse HEAD get a GET whose body is not read."""
    headers = {**spec.headers, "Accept-Encoding": "identity"}
    response = ctx.get(spec.url, headers=headers, method="HEAD", allow_redirects=True)
    if response.status_code in (400, 403, 405, 501):
        response.close()
        response = ctx.get(spec.url, headers=headers, stream=True)
    return response


def _size(response: requests.Response) -> int | None:
    if response.headers.get("Content-Encoding", "identity") != "identity":
        return None
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


_DISPOSITION_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def filename_from_disposition(value: str | None) -> str | None:
    """The file name of a Content-Disposition header (RFC 6266): `filename*` wins over `filename`."""
    if not value:
        return None
    params: dict[str, str] = {}
    for name, raw in _DISPOSITION_PARAM.findall(value):
        raw = raw.strip()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params.setdefault(name.lower(), raw)
    extended = params.get("filename*")
    if extended and extended.count("'") >= 2:
        charset, _language, encoded = extended.split("'", 2)
        try:
            return unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            pass
    return params.get("filename") or None


def explain(status: int, url: str) -> str | None:
    shown = redact(url)
    if status in (401, 403):
        return (
            f"{shown} answered {status}: the file needs credentials; add them as a header (headers = {{...}})"
        )
    if status == 404:
        return f"{shown} answered 404: check the URL"
    if status == 410:
        return f"{shown} answered 410: the file was removed"
    return None
