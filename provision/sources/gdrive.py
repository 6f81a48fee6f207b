"""Google Drive items: the share link read past the confirm page (drive.py) to the final URL,
name and size; the bytes are the engine's."""

from __future__ import annotations

from ..download import Download
from ..drive import DriveError, open_drive_file
from ..paths import safe_filename
from ..plan import GDriveSpec, Item
from .base import Context, SourceError
from .url import filename_from_disposition


def resolve(item: Item, ctx: Context) -> list[Download]:
    """The final download URL (past the confirm page), the name and the size; no body read."""
    spec: GDriveSpec = item.spec  # type: ignore[assignment]
    file_id = spec.file_id
    try:
        response = open_drive_file(ctx.session, file_id, retry=ctx.retry)
    except DriveError as err:
        raise SourceError(str(err)) from None
    with response:
        name = (
            item.filename
            or safe_filename(filename_from_disposition(response.headers.get("Content-Disposition")))
            or safe_filename(item.name)
        )
        length = response.headers.get("Content-Length", "")
        final_url = response.url
    return [
        Download(
            url=final_url,
            dest=item.folder / name,
            size=int(length) if length.isdigit() else None,
            identity=f"gdrive:{file_id}",
            pin={"file_id": file_id},
            explain=lambda status: (
                f"Google Drive answered {status} for file {file_id}: share it with 'Anyone with the link'"
            ),
        )
    ]
