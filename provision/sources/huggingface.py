"""Hugging Face: metadata and errors through huggingface_hub, bytes through our engine.

`get_hf_file_metadata` gives the commit, the size and the ETag (the sha256 of LFS files, the
git blob id of small ones); the download URL is pinned to that commit so a resumed download
never mixes two versions. The token goes in an Authorization header to the Hub's host only:
the engine's session drops it when the Hub redirects to its CDN.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path, PurePosixPath

from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import filter_repo_objects

from ..download import Checksum, Download
from ..http import USER_AGENT
from ..links import DEFAULT_HF_ENDPOINT, endpoint
from ..paths import safe_filename
from ..plan import HuggingFaceSpec, Item
from ..retry import GaveUp, Retryable, retrying
from ..secrets import redact
from .base import Context, SourceError

log = logging.getLogger("provision")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


def hub() -> str:
    return endpoint(os.environ, "HF_ENDPOINT", DEFAULT_HF_ENDPOINT)


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def resolve(item: Item, ctx: Context) -> list[Download]:
    spec: HuggingFaceSpec = item.spec  # type: ignore[assignment]
    if spec.file is None:
        return _resolve_repository(item, spec, ctx)
    url = hf_hub_url(spec.repo, spec.file, revision=spec.revision, endpoint=hub())
    meta = _call(
        ctx,
        spec,
        lambda: get_hf_file_metadata(
            url, token=_token() or False, timeout=ctx.timeout[1], user_agent=USER_AGENT, endpoint=hub()
        ),
    )
    commit = meta.commit_hash or spec.revision
    dest = item.folder / item.filename  # type: ignore[operator]
    return [file_download(spec, spec.file, commit, dest, meta.size, _checksum(meta.etag))]


def file_download(
    spec: HuggingFaceSpec, path: str, commit: str, dest: Path, size: int | None, checksum: Checksum | None
) -> Download:
    """One file of the repository at a commit (resolved now, or as a lock pins it)."""
    return Download(
        url=hf_hub_url(spec.repo, path, revision=commit, endpoint=hub()),
        dest=dest,
        size=size,
        checksum=checksum,
        headers=auth_headers(),
        identity=f"hf:{spec.repo}@{commit}:{path}",
        pin={"repo": spec.repo, "file": path, "commit": commit},
        explain=lambda status: explain_status(status, spec),
    )


def _resolve_repository(item: Item, spec: HuggingFaceSpec, ctx: Context) -> list[Download]:
    api = HfApi(endpoint=hub(), token=_token() or False, user_agent=USER_AGENT)
    info = _call(ctx, spec, lambda: api.model_info(spec.repo, revision=spec.revision))
    commit = info.sha or spec.revision
    tree = _call(ctx, spec, lambda: list(api.list_repo_tree(spec.repo, revision=commit, recursive=True)))
    files = [entry for entry in tree if hasattr(entry, "blob_id") and entry.size is not None]
    chosen = list(
        filter_repo_objects(
            files,
            allow_patterns=list(spec.include) or None,
            ignore_patterns=list(spec.exclude) or None,
            key=lambda entry: entry.path,
        )
    )
    downloads = []
    for entry in chosen:
        parts = PurePosixPath(entry.path).parts
        if any(part.startswith(".") for part in parts):
            continue  # .gitattributes and friends: not part of the model
        safe = [safe_filename(part) for part in parts]
        if any(part is None for part in safe):
            continue
        lfs = getattr(entry, "lfs", None)
        checksum = Checksum("sha256", lfs.sha256) if lfs else Checksum("git-sha1", entry.blob_id)
        dest = item.folder.joinpath(*safe)  # type: ignore[arg-type]
        downloads.append(file_download(spec, entry.path, commit, dest, entry.size, checksum))
    if not downloads:
        raise SourceError(
            f"no file of {spec.repo} at {spec.revision} matches include={list(spec.include)}"
            f" exclude={list(spec.exclude)}: check the patterns against"
            f" {hub()}/{spec.repo}/tree/{spec.revision}"
        )
    return downloads


def check_token(ctx: Context) -> str | None:
    """A refused HF_TOKEN (401) fails the Hugging Face items; a check that cannot get through
    (a 5xx from a mirror, no network) is retried like any request and then only warned about:
    public files need no token, and gated ones fail on their own with the Hub's reason."""
    try:
        response = ctx.get(f"{hub()}/api/whoami-v2", headers={"Authorization": f"Bearer {_token()}"})
    except SourceError as err:
        if ctx.host_down(hub()):  # the items say so, once, at the end
            return None
        log.warning(f"warning: cannot check HF_TOKEN at {hub()} ({err}); going on without the check")
        return None
    with response:
        if response.status_code == 401:
            return "HF_TOKEN was refused (401): create a read token at https://huggingface.co/settings/tokens"
        if response.status_code != 200:
            log.warning(f"warning: cannot check HF_TOKEN: {hub()} answered {response.status_code}; going on")
    return None


def _call(ctx: Context, spec: HuggingFaceSpec, fn):
    """Run a huggingface_hub call, retrying 5xx/429/network errors, explaining the rest."""
    result = []

    def attempt() -> None:
        try:
            result.append(fn())
        except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
            raise
        except HfHubHTTPError as err:
            status = _status(err)
            if status == 429 or (status or 0) >= 500:
                raise Retryable(f"HTTP {status}") from None
            raise
        # Anything else (transport errors of the Hub client, by version) goes to retrying(),
        # which tells a dead host from a transient failure (failures.classify).

    try:
        retrying(ctx.retry, f"{hub()}/{spec.repo}", attempt, url=hub())
    except GatedRepoError:
        raise SourceError(gated_message(spec)) from None
    except RevisionNotFoundError:
        raise SourceError(
            f'revision {spec.revision!r} not found in {spec.repo}: check "revision" (a branch, tag or commit)'
        ) from None
    except RepositoryNotFoundError:
        # Some mirrors (olah) answer a missing file of an existing repository this way: ask
        # for the repository itself before blaming "repo".
        if spec.file is not None and _repository_exists(ctx, spec):
            raise SourceError(_missing_file(spec)) from None
        hint = "" if _token() else " (if it is private, set HF_TOKEN to a token with access)"
        raise SourceError(f'repository {spec.repo} not found at {hub()}: check "repo"{hint}') from None
    except EntryNotFoundError:
        raise SourceError(_missing_file(spec)) from None
    except HfHubHTTPError as err:
        if _status(err) == 401:
            raise SourceError(
                "Hugging Face refused HF_TOKEN (401): create a read token at"
                " https://huggingface.co/settings/tokens"
            ) from None
        raise SourceError(
            f"Hugging Face answered {_status(err)}: {redact(str(err).splitlines()[0])}"
        ) from None
    except GaveUp as err:
        raise SourceError(str(err)) from None
    return result[0]


def _missing_file(spec: HuggingFaceSpec) -> str:
    return (
        f'file {spec.file!r} not found in {spec.repo} at {spec.revision}: check "file" against'
        f" {hub()}/{spec.repo}/tree/{spec.revision}"
    )


def _repository_exists(ctx: Context, spec: HuggingFaceSpec) -> bool:
    api = HfApi(endpoint=hub(), token=_token() or False, user_agent=USER_AGENT)
    try:
        api.model_info(spec.repo, revision=spec.revision)
    except Exception:  # not found, refused, unreachable: the first answer stands
        return False
    return True


def gated_message(spec: HuggingFaceSpec) -> str:
    """The one explanation of a gated repository, before any request and after a refusal."""
    page = f"{hub()}/{spec.repo}"
    if _token():
        return f"{spec.repo} is gated: accept its terms at {page} with the account whose token is in HF_TOKEN"
    return (
        f"{spec.repo} is gated: accept its terms at {page} and set HF_TOKEN to a read token of that account"
    )


def explain_status(status: int, spec: HuggingFaceSpec) -> str | None:
    if status == 403 or (status == 401 and spec.gated):
        return gated_message(spec)
    if status == 401:
        return f"Hugging Face refused the download (401): set HF_TOKEN to a token with access to {spec.repo}"
    if status == 404:
        return f'{spec.file} of {spec.repo} vanished from the Hub (404): check "file" and "revision"'
    return None


def _checksum(etag: str | None) -> Checksum | None:
    value = (etag or "").strip('"').lower()
    if _SHA256.match(value):
        return Checksum("sha256", value)
    if _SHA1.match(value):
        return Checksum("git-sha1", value)
    return None


def auth_headers() -> dict[str, str]:
    token = _token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _status(err: Exception) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)
