"""What happened to each item, for people (a table) and for programs (JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .ondisk import IN_PLACE, MISSING, PARTIAL, REPLACE, TO_CHECK
from .plan import Item
from .secrets import redact

MiB = 1024 * 1024
PLANNED, OK, SKIPPED, FAILED = "planned", "ok", "skipped", "failed"
# --update could not ask the source, but the item's files are in place as verified: not a failure.
KEPT = "kept"


@dataclass
class ItemResult:
    category: str
    name: str
    source: str
    dest: str  # absolute destination file, or its folder while the name is unknown
    status: str
    size: int | None = None  # bytes the item should have, when known
    bytes: int = 0  # bytes transferred in this run
    seconds: float = 0.0
    reason: str | None = None  # why it failed, or what a dry-run found worth saying
    detail: str | None = None  # e.g. which CivitAI key gave the id
    files: int | None = None  # whole repositories: how many files
    verified: str | None = None  # sha256, git blob id, size only, none; records (in place as recorded)
    on_disk: str | None = None  # dry-run: in place, partial N%, missing, will replace, to check
    have: int = 0  # dry-run: bytes of it already on disk
    # With a mirror (--mirror): per file under the models folder, "mirror", "source" or "disk".
    fetched_from: dict[str, str] | None = None

    @classmethod
    def for_item(cls, item: Item, status: str, dest: Path | None = None, **extra) -> ItemResult:
        return cls(item.category, item.name, item.source, str(dest or item.dest), status, **extra)


@dataclass
class Report:
    results: list[ItemResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    free_bytes: int | None = None  # free space on the models disk (dry-run)
    models_root: Path | None = None  # destinations are shown relative to it (--wide: absolute)

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.results if r.status == FAILED]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    @property
    def total_size(self) -> int:
        return sum(r.size or 0 for r in self.results)

    def to_json(self) -> str:
        """{"items": [one object per item], "summary": counts, sizes and the exit code}."""
        # Every text field passes through redact(): reasons may quote server answers.
        rows = []
        for result in self.results:
            row = asdict(result)
            for key, value in row.items():
                if isinstance(value, str):
                    row[key] = redact(value)
            rows.append(row)
        return json.dumps({"items": rows, "summary": self.summary_fields()}, indent=2)

    def summary_fields(self) -> dict:
        """What summary() says, for programs: `jq .summary.exit_code`."""
        counts = {s: sum(r.status == s for r in self.results) for s in (PLANNED, OK, SKIPPED, KEPT, FAILED)}
        return {
            "items": len(self.results),
            **counts,
            "size": self.total_size,
            "bytes": sum(r.bytes for r in self.results),
            "to_download": self.to_download if self.dry_run else None,
            "free_bytes": self.free_bytes,
            "dry_run": self.dry_run,
            "warnings": [redact(w) for w in self.warnings],
            "exit_code": self.exit_code,
        }

    @property
    def to_download(self) -> int:
        return sum(max(0, (r.size or 0) - r.have) for r in self.results if r.status == PLANNED)

    def final_table(self, wide: bool = False) -> str:
        """The end of a real run, for people: per item its size, time, speed, check and status;
        within 80 columns unless `wide`."""
        headers = ("ITEM", "SIZE", "TIME", "SPEED", "CHECKED BY", "STATUS")
        rows = []
        for r in self.results:
            # Below a MiB a speed says nothing (a few bytes over an item's whole time, most of
            # which went to files already in place): no "5 B/s" that reads like a broken link.
            speed = f"{human_size(int(r.bytes / r.seconds))}/s" if r.bytes >= MiB and r.seconds else "-"
            seconds = f"{r.seconds:.1f}s" if r.seconds else "-"
            rows.append(
                (f"{r.category}.{r.name}", human_size(r.size), seconds, speed, r.verified or "-", r.status)
            )
        return redact("\n".join(columns(headers, rows, None if wide else WIDTH, squeeze=(0,))))

    def reasons(self, status: str) -> list[str]:
        """Why the items of this status (failed, kept) are so: one line per distinct reason,
        naming its items, so a dead host's 56 items make one line, not 56."""
        by_reason: dict[str, list[str]] = {}
        for r in self.results:
            if r.status == status and r.reason:
                by_reason.setdefault(r.reason, []).append(f"{r.category}.{r.name}")
        lines = []
        for reason, names in by_reason.items():
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            lines.append(redact(f"{status} {shown}: {reason}"))
        return lines

    def table(self, wide: bool = False) -> str:
        """The plan (a dry-run): per item its source, size, what is on disk and where it goes
        (relative to the models folder, and within 80 columns, unless `wide`)."""
        headers = ("ITEM", "SOURCE", "SIZE", "ON DISK", "DESTINATION")
        rows = [
            (
                f"{r.category}.{r.name}",
                r.source,
                human_size(r.size),
                FAILED if r.status == FAILED else r.on_disk or r.status,
                self.shown(r.dest, wide),
            )
            for r in self.results
        ]
        lines = columns(headers, rows, None if wide else WIDTH, squeeze=(4, 0))
        lines += [f"  {line}" for line in self.reasons(FAILED)]
        for r in self.results:
            if r.reason and r.status != FAILED:
                lines.append(f"  {r.category}.{r.name}: {r.reason}")
            if r.detail:
                lines.append(f"  {r.category}.{r.name}: {r.detail}")
        return redact("\n".join(lines))

    def shown(self, dest: str, wide: bool = False) -> str:
        """A destination relative to the models folder (SD.Next's folder names), an extension's
        relative to SD.Next's data folder (`extensions/NAME`); absolute if wide."""
        path = Path(dest)
        if wide or self.models_root is None:
            return dest
        for root in (self.models_root, self.models_root.parent):
            if path.is_relative_to(root):
                return str(path.relative_to(root))
        return dest

    def summary(self) -> str:
        counts = {s: sum(r.status == s for r in self.results) for s in (PLANNED, OK, SKIPPED, KEPT, FAILED)}
        parts = [f"{n} {s}" for s, n in counts.items() if n]
        count = len(self.results)
        text = f"{count} item{'' if count == 1 else 's'}: " + (", ".join(parts) or "nothing to do")
        if self.dry_run and any(r.on_disk for r in self.results):
            kinds = ((IN_PLACE, "in place"), (PARTIAL, "partial"), (MISSING, "missing"))
            kinds += ((REPLACE, "to replace"), (TO_CHECK, "to check"))
            counts = [(sum((r.on_disk or "").startswith(k) for r in self.results), name) for k, name in kinds]
            text += f" ({', '.join(f'{n} {name}' for n, name in counts if n)})"
            if self.total_size:
                text += f"; to download {human_size(self.to_download)} of {human_size(self.total_size)}"
            if self.free_bytes is not None:
                after = self.free_bytes - self.to_download
                text += f"; {human_size(self.free_bytes)} free on the models disk, {human_size(after)} after"
            return text
        if self.total_size:
            text += f"; total {human_size(self.total_size)}"
        if self.free_bytes is not None:
            text += f"; {human_size(self.free_bytes)} free on the models disk"
        return text


# Tables fit an 80-column terminal unless --wide asks for whole cells: 79, as a row that fills
# the last column makes some terminals wrap the next character.
WIDTH = 79
MIN_SQUEEZED = 12  # a squeezed cell keeps at least this many characters


def columns(
    headers: tuple[str, ...], rows: list[tuple], width: int | None = None, squeeze: tuple[int, ...] = ()
) -> list[str]:
    """A plain text table: each column as wide as its widest cell, two spaces between. With a
    `width`, the `squeeze` columns (in that order) give up characters from their middle, "…"
    marking the cut, until every row fits (the ends of a path say the most: folder, file); the
    widest of them gives first, so no one column is cut to nothing."""
    cells = [tuple(str(x) for x in row) for row in (headers, *rows)]
    widths = [max(len(x) for x in col) for col in zip(*cells, strict=False)]
    if width is not None:
        squeeze = tuple(i for i in squeeze if i < len(widths))
        floor = {i: max(MIN_SQUEEZED, len(headers[i])) for i in squeeze}
        over = sum(widths) + 2 * (len(widths) - 1) - width
        while over > 0:
            can = [i for i in squeeze if widths[i] > floor[i]]
            if not can:
                break
            widest = max(can, key=lambda i: widths[i])
            widths[widest] -= 1
            over -= 1
        cells = [
            tuple(
                elide(x, w) if i in squeeze else x for i, (x, w) in enumerate(zip(row, widths, strict=False))
            )
            for row in cells
        ]
    return ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=False)).rstrip() for row in cells]


def elide(text: str, width: int) -> str:
    """`text` in at most `width` characters: its start and its end, "…" between."""
    if len(text) <= width:
        return text
    head = (width - 1) // 3
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def error_json(kind: str, problems: list[str], exit_code: int) -> str:
    """A run that ended before any item (a bad or unreachable config, a busy workspace, a disk
    that refuses writes), in the shape of a report: `provision ... --json | jq` never reads
    an empty stdout."""
    summary = {"items": 0, "exit_code": exit_code}
    error = {"kind": kind, "problems": [redact(p) for p in problems]}
    return json.dumps({"items": [], "summary": summary, "error": error}, indent=2)
