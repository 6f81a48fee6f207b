"""The network half of the pipeline (sources and the download engine): see issue 3."""

from __future__ import annotations

from .report import FAILED, PLANNED, ItemResult


def execute(items, provisioner) -> list[ItemResult]:
    if provisioner.dry_run:
        return [ItemResult(i.category, i.name, i.source, str(i.dest), PLANNED) for i in items]
    return [
        ItemResult(
            i.category,
            i.name,
            i.source,
            str(i.dest),
            FAILED,
            reason="downloading is not implemented yet: use --dry-run",
        )
        for i in items
    ]
