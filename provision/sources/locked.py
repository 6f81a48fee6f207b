"""A locked item: its downloads come from the lock (lockfile.py), not from asking the source.

Hub and CivitAI files are fetched by commit and by file id without a metadata request; a plain
URL from the config's URL with its headers; a Drive file still passes the confirm page for its
download URL. Each carries the locked size and hash, so bytes that differ from the lock fail
their check and never land.
"""

from __future__ import annotations

from ..download import Checksum, Download
from ..plan import CivitaiSpec, HuggingFaceSpec, Item, UrlSpec
from . import Context


def resolve(item: Item, ctx: Context) -> list[Download]:
    downloads = []
    for file in item.locked or ():
        checksum = Checksum("sha256", file.sha256) if file.sha256 else Checksum("git-sha1", file.git_blob)
        download = _download(item, file, ctx)
        download.dest = file.dest
        download.size = file.size
        download.checksum = checksum
        download.pin = dict(file.pin)
        download.locked = True
        downloads.append(download)
    return downloads


def _download(item: Item, file, ctx: Context) -> Download:
    spec = item.spec
    if isinstance(spec, HuggingFaceSpec):
        from huggingface_hub import hf_hub_url

        from . import huggingface

        repo, name, commit = file.pin["repo"], file.pin["file"], file.pin["commit"]
        return Download(
            url=hf_hub_url(repo, name, revision=commit, endpoint=huggingface.hub()),
            dest=file.dest,
            headers=huggingface.auth_headers(),
            identity=f"hf:{repo}@{commit}:{name}",
            explain=lambda status: huggingface.explain_status(status, spec),
        )
    if isinstance(spec, CivitaiSpec):
        from . import civitai

        version_id, file_id = file.pin["version_id"], file.pin["file_id"]
        return Download(
            url=civitai.download_url(version_id, file_id),
            dest=file.dest,
            headers=civitai.headers(),
            identity=f"civitai:{version_id}:{file_id}",
            explain=lambda status: civitai.explain(status, f"version {version_id}"),
        )
    if isinstance(spec, UrlSpec):
        from . import url

        return Download(
            url=spec.url,
            dest=file.dest,
            headers=dict(spec.headers),
            identity=url.identity(spec),
            explain=lambda status: url.explain(status, spec.url),
        )
    from . import gdrive  # the download URL lies behind Drive's confirm page: ask for it

    return gdrive.resolve(item, ctx)[0]
