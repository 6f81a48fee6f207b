"""Recognise the URLs of services we know, so they get their token and their hash checks.

A Hugging Face `/resolve/` URL becomes a huggingface item, a CivitAI download or model-page
URL a civitai item, and any Google Drive share link a Drive item. Hosts of the configured
endpoints (HF_ENDPOINT, CIVITAI_ENDPOINT, GDRIVE_ENDPOINT) count as well, so a mirror or a
test server is recognised like the real service.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import parse_qs, unquote, urlsplit

from .plan import CivitaiSpec, GDriveSpec, HuggingFaceSpec

HF_HOSTS = {"huggingface.co", "www.huggingface.co", "hf.co"}
CIVITAI_HOSTS = {"civitai.com", "www.civitai.com", "civitai.red", "www.civitai.red"}
GDRIVE_HOSTS = {"drive.google.com", "docs.google.com", "drive.usercontent.google.com"}

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_CIVITAI_ENDPOINT = "https://civitai.com"
DEFAULT_GDRIVE_ENDPOINT = "https://drive.google.com"
DEFAULT_GITHUB_ENDPOINT = "https://github.com"
GITHUB_HOSTS = {"github.com", "www.github.com"}
_GITHUB_REPO = re.compile(r"^/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+?)(?:\.git)?/?$")

_HF_RESOLVE = re.compile(r"^/(?P<repo>[\w.-]+/[\w.-]+)/(?:resolve|blob)/(?P<rev>[^/]+)/(?P<path>.+)$")
_CIVITAI_DOWNLOAD = re.compile(r"^/api/download/models/(?P<id>\d+)/?$")
_CIVITAI_MODEL_PAGE = re.compile(r"^/models/(?P<id>\d+)(?:/[^/]*)?/?$")
_DRIVE_ID = re.compile(r"^[-\w]{10,}$")


def endpoint(env: Mapping[str, str], name: str, default: str) -> str:
    return (env.get(name) or default).rstrip("/")


def _is_service(url: str, env: Mapping[str, str], var: str, default: str, known: set[str]) -> bool:
    """True for the service's public hosts and for its configured endpoint (host and port:
    test servers share 127.0.0.1 and differ only by port)."""
    parts = urlsplit(url)
    configured = urlsplit(endpoint(env, var, default)).netloc.lower()
    return (parts.hostname or "").lower() in known or parts.netloc.lower() == configured


def huggingface_spec(url: str, env: Mapping[str, str] | None = None) -> HuggingFaceSpec | None:
    env = os.environ if env is None else env
    parts = urlsplit(url)
    if not _is_service(url, env, "HF_ENDPOINT", DEFAULT_HF_ENDPOINT, HF_HOSTS):
        return None
    match = _HF_RESOLVE.match(parts.path)
    if not match:
        return None
    return HuggingFaceSpec(repo=match["repo"], file=unquote(match["path"]), revision=unquote(match["rev"]))


def civitai_spec(url: str, env: Mapping[str, str] | None = None) -> CivitaiSpec | None:
    env = os.environ if env is None else env
    parts = urlsplit(url)
    if not _is_service(url, env, "CIVITAI_ENDPOINT", DEFAULT_CIVITAI_ENDPOINT, CIVITAI_HOSTS):
        return None
    query = parse_qs(parts.query)
    file_type = query.get("type", [None])[0]
    file_format = query.get("format", [None])[0]
    if match := _CIVITAI_DOWNLOAD.match(parts.path):
        return CivitaiSpec(int(match["id"]), None, "download URL", file_type, file_format)
    if match := _CIVITAI_MODEL_PAGE.match(parts.path):
        version = query.get("modelVersionId", [""])[0]
        if version.isdigit():
            return CivitaiSpec(int(version), int(match["id"]), "modelVersionId in the page URL")
        return CivitaiSpec(None, int(match["id"]), "model page URL (no modelVersionId)")
    return None


def gdrive_file_id(url: str, env: Mapping[str, str] | None = None) -> str | None:
    """The file id of any Google Drive share or download link, else None."""
    env = os.environ if env is None else env
    if not _is_service(url, env, "GDRIVE_ENDPOINT", DEFAULT_GDRIVE_ENDPOINT, GDRIVE_HOSTS):
        return None
    # gdown knows the share forms but only for drive/docs hosts: ask it with the real host.
    # (Imported here: the gdown package pulls in BeautifulSoup, a fifth of a second.)
    from gdown.parse_url import parse_url as gdown_parse_url

    parts = urlsplit(url)
    file_id, _ = gdown_parse_url(parts._replace(netloc="drive.google.com").geturl())
    if file_id is None:
        file_id = parse_qs(parts.query).get("id", [None])[0]
    if file_id and _DRIVE_ID.match(file_id):
        return file_id
    return None


def gdrive_spec(url: str, env: Mapping[str, str] | None = None) -> GDriveSpec | None:
    file_id = gdrive_file_id(url, env)
    return GDriveSpec(file_id) if file_id else None


def recognise(
    url: str, env: Mapping[str, str] | None = None
) -> HuggingFaceSpec | CivitaiSpec | GDriveSpec | None:
    """The spec of a known service for this URL, or None for a plain URL."""
    return huggingface_spec(url, env) or civitai_spec(url, env) or gdrive_spec(url, env)


def github_repository(url: str, env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(owner, repo) of a GitHub repository URL (`https://github.com/OWNER/REPO[.git]`), or None.
    GITHUB_ENDPOINT (default https://github.com) counts too: a test server or an enterprise host."""
    env = os.environ if env is None else env
    if not _is_service(url, env, "GITHUB_ENDPOINT", DEFAULT_GITHUB_ENDPOINT, GITHUB_HOSTS):
        return None
    match = _GITHUB_REPO.match(urlsplit(url).path)
    return (match["owner"], match["repo"]) if match else None


def github_archive_url(owner: str, repo: str, commit: str, env: Mapping[str, str] | None = None) -> str:
    """Where GitHub serves a commit as a tar.gz made by `git archive` (it redirects to codeload)."""
    env = os.environ if env is None else env
    return (
        f"{endpoint(env, 'GITHUB_ENDPOINT', DEFAULT_GITHUB_ENDPOINT)}/{owner}/{repo}/archive/{commit}.tar.gz"
    )
