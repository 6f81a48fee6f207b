"""A locked item: its downloads come from the lock (lockfile.py), not from asking the source.

Hub and CivitAI files are fetched by commit and by file id without a metadata request; a plain
URL from the config's URL with its headers; a Drive file still passes the confirm page for its
download URL. Each carries the locked size and hash, so bytes that differ from the lock fail
their check and never land.
"""

from __future__ import annotations

from ..download import Download
from ..plan import CivitaiSpec, HuggingFaceSpec, Item, LockedFile, UrlSpec
from .base import Context


def resolve(item: Item, ctx: Context) -> list[Download]:
    downloads = []
    for file in item.locked or ():
        download = _download(item, file, ctx)
        download.dest = file.dest
        download.size = file.size
        download.checksum = file.checksum
        download.pin = dict(file.pin)
        download.locked = True
        downloads.append(download)
    return downloads


def _download(item: Item, file: LockedFile, ctx: Context) -> Download:
    """The source's own download of the file the lock names."""
    spec, pin = item.spec, file.pin
    if isinstance(spec, HuggingFaceSpec):
        from . import huggingface

        return huggingface.file_download(spec, str(pin["file"]), str(pin["commit"]), file.dest, None, None)
    if isinstance(spec, CivitaiSpec):
        from . import civitai

        model, version, file_id = int(pin["model_id"]), int(pin["version_id"]), int(pin["file_id"])
        return civitai.file_download(model, version, file_id, file.dest)
    if isinstance(spec, UrlSpec):
        from . import url

        return url.file_download(spec, file.dest, dict(pin))
    from . import gdrive  # the download URL lies behind Drive's confirm page: ask for it

    return gdrive.resolve(item, ctx)[0]
