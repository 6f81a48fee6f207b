"""CivitAI: metadata from /api/v1/model-versions/{id}, bytes from /api/download/models/{id}.

The token travels in an Authorization header (never `?token=`, which leaks into logs), with our
own User-Agent (a browser-like one gets a login page instead of a 401). The download answers
with a redirect to presigned storage; the engine's session drops the header on that host change,
as storage refuses requests that carry one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlencode

from ..download import Checksum, Download
from ..links import DEFAULT_CIVITAI_ENDPOINT, endpoint
from ..paths import safe_filename
from ..plan import CivitaiSpec, Item
from .base import Context, SourceError

log = logging.getLogger("provision")
KEY_HINT = "set CIVITAI_TOKEN to an API key (civitai.com: Account settings -> API Keys)"


def base() -> str:
    return endpoint(os.environ, "CIVITAI_ENDPOINT", DEFAULT_CIVITAI_ENDPOINT)


def headers() -> dict[str, str]:
    token = os.environ.get("CIVITAI_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


# CivitAI's model types and the categories whose SD.Next folder loads them.
CATEGORIES_OF_TYPE = {
    "Checkpoint": {"checkpoints", "diffusers", "unet"},
    "LORA": {"lora"},
    "LoCon": {"lora"},
    "DoRA": {"lora"},
    "TextualInversion": {"embeddings"},
    "VAE": {"vae"},
    "Controlnet": {"controlnet"},
    "Upscaler": {"esrgan", "realesrgan", "swinir", "scunet"},
}


def resolve(item: Item, ctx: Context) -> list[Download]:
    spec: CivitaiSpec = item.spec  # type: ignore[assignment]
    version_id = spec.version_id or _newest_version(item, spec, ctx)
    version = _api(ctx, f"/api/v1/model-versions/{version_id}", f"model version {version_id}")
    _warn_about_category(item, version_id, (version.get("model") or {}).get("type"))
    chosen = _choose_file(version.get("files") or [], spec, version_id)
    name = item.filename or safe_filename(chosen.get("name")) or f"civitai-{version_id}.safetensors"
    sha256 = ((chosen.get("hashes") or {}).get("SHA256") or "").lower() or None
    size_kb = chosen.get("sizeKB")
    download = file_download(
        int(version.get("modelId") or spec.model_id or 0), version_id, chosen.get("id"), item.folder / name
    )
    download.checksum = Checksum("sha256", sha256) if sha256 else None
    download.size_hint = int(size_kb * 1024) if isinstance(size_kb, int | float) else None
    return [download]


def file_download(model_id: int, version_id: int, file_id: int | None, dest: Path) -> Download:
    """One file of a model version (resolved now, or as a lock pins it). Always named by
    fileId: without it CivitAI picks one by the account's preferences (fp8 or bf16, pruned or
    full), which may not be the file whose sha256 was read."""
    return Download(
        url=f"{base()}/api/download/models/{version_id}?{urlencode({'fileId': file_id})}",
        dest=dest,
        headers=headers(),
        identity=f"civitai:{version_id}:{file_id}",
        pin={"model_id": model_id, "version_id": int(version_id), "file_id": int(file_id or 0)},
        explain=lambda status: explain(status, f"version {version_id}"),
    )


def _newest_version(item: Item, spec: CivitaiSpec, ctx: Context) -> int:
    model = _api(ctx, f"/api/v1/models/{spec.model_id}", f"model {spec.model_id}")
    versions = model.get("modelVersions") or []
    if not versions:
        raise SourceError(f"CivitAI model {spec.model_id} has no versions to download")
    newest = versions[0]  # the API lists them newest first
    log.info(
        f"{item.table}: CivitAI model {spec.model_id} -> newest version {newest['id']}"
        f" ({newest.get('name', '?')})"
    )
    return int(newest["id"])


def _choose_file(files: list[dict], spec: CivitaiSpec, version_id: int) -> dict:
    if not files:
        raise SourceError(f"CivitAI version {version_id} lists no files")
    if spec.file_type or spec.file_format:
        for file in files:
            type_ok = not spec.file_type or str(file.get("type", "")).lower() == spec.file_type.lower()
            fmt = str((file.get("metadata") or {}).get("format", ""))
            format_ok = not spec.file_format or fmt.lower() == spec.file_format.lower()
            if type_ok and format_ok:
                return file
        offered = ", ".join(f"{f.get('type')}/{(f.get('metadata') or {}).get('format')}" for f in files)
        raise SourceError(
            f"CivitAI version {version_id} has no file of type={spec.file_type!r} format={spec.file_format!r}"
            f' (it offers: {offered}): fix "type"/"format"'
        )
    return next((f for f in files if f.get("primary")), files[0])


def _api(ctx: Context, path: str, what: str) -> dict:
    response = ctx.get(f"{base()}{path}", headers=headers())
    with response:
        if response.status_code != 200:
            raise SourceError(
                explain(response.status_code, what) or f"CivitAI answered {response.status_code}"
            )
        try:
            return response.json()
        except ValueError:
            raise SourceError(f"CivitAI sent something that is not JSON for {what}") from None


def explain(status: int, what: str) -> str | None:
    has_token = bool(os.environ.get("CIVITAI_TOKEN"))
    if status == 401:
        if has_token:
            return f"CivitAI refused CIVITAI_TOKEN for {what} (401): create a new API key and {KEY_HINT}"
        return f"CivitAI requires a login to download {what} (401): {KEY_HINT}"
    if status == 403:
        return (
            f"CivitAI refused {what} (403): it may be in early access or need the creator's permission;"
            " open the model page with the account of CIVITAI_TOKEN"
        )
    if status == 404:
        return (
            f"CivitAI has no {what} (404): check the id (version_id is the number after"
            " ?modelVersionId= on the model page; a model id is not a version id)"
        )
    if status == 410:
        return f"CivitAI {what} was removed or archived (410): pick another version"
    if status == 429:
        return "CivitAI rate limit (429) persisted: wait a few minutes and run again"
    return None


def _warn_about_category(item: Item, version_id: int, model_type: str | None) -> None:
    """A LORA listed under checkpoints lands where SD.Next looks for checkpoints: say so."""
    categories = CATEGORIES_OF_TYPE.get(model_type or "")
    if categories and item.category not in categories:
        log.warning(
            f"warning: {item.table}: CivitAI says version {version_id} is a {model_type}, but it is listed"
            f" under {item.category}: SD.Next will not load it from there; list it under"
            f" [models.{sorted(categories)[0]}]"
        )


def check_token(ctx: Context) -> str | None:
    """As for HF_TOKEN: only a 401 is a problem; a check that cannot get through is a warning."""
    try:
        response = ctx.get(f"{base()}/api/v1/me", headers=headers())
    except SourceError as err:
        if ctx.host_down(base()):  # the items say so, once, at the end
            return None
        log.warning(f"warning: cannot check CIVITAI_TOKEN at {base()} ({err}); going on without the check")
        return None
    with response:
        if response.status_code == 401:
            return f"CivitAI refused CIVITAI_TOKEN (401): {KEY_HINT}"
        if response.status_code != 200:
            log.warning(
                f"warning: cannot check CIVITAI_TOKEN: CivitAI answered {response.status_code}; going on"
            )
    return None
