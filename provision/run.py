"""The network half of the pipeline: resolve every item, then fetch every file.

Resolution (metadata only) runs `jobs` items at once; a dry-run stops there and reports names
and sizes. A real run then hands every file to the engine, `jobs` files at once (and beside
them up to SMALL_JOBS files smaller than a piece), under the engine's global cap on
connections, and folds the files back into one result per item.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import mirror, paths, staging
from .download import Checksum, Download
from .engine import Engine, FetchError
from .http import new_session
from .ondisk import file_state, item_state
from .plan import Item
from .progress import make_progress
from .progressfile import ProgressFile
from .records import ItemRecords, VerifiedRecords, workspace_records
from .report import FAILED, KEPT, OK, PLANNED, SKIPPED, ItemResult, human_size
from .retry import RetryPolicy
from .secrets import redact
from .sources import Context, SourceError, check_tokens, resolve

log = logging.getLogger("provision")

# Files smaller than one piece run in a lane of their own, this many at once beside the `jobs`
# bigger ones: each needs one connection for moments, so in the big files' queue they went five
# at a time, after every big file (50 files of 1.7 MiB at 10 MiB/s a connection: the last 2 s of
# a run on five connections). aria2c's answer to many small files is `-j 16`; with twice that
# many waiting, the host's limit can rise past it (slots.py) when its rate keeps rising.
SMALL_JOBS = 32
# Items resolved at once (metadata: a HEAD, an API call), whatever --jobs says: each is a round
# trip or two (200 URLs five at a time from a server 20 ms away: 0.8 s before the first byte).
# A plain URL's HEAD asks a file server what a GET's headers would say: as many at once as
# small files are fetched (200 URLs 20 ms away: 5% less wall time than at 16); the Hub's and
# CivitAI's APIs count requests per client, so they stay at 16.
RESOLVE_JOBS = 16


@dataclass(frozen=True)
class RunSettings:
    """What a run needs to know (the Provisioner's options), handed down from core.py."""

    workspace: Path
    jobs: int
    connections: int
    per_file: int
    retry: RetryPolicy
    timeout: tuple[float, float]
    dry_run: bool = False
    update: bool = False
    verify: bool = False
    force: bool = False  # fetch again what is in place (the old file stays until the new one is verified)
    progress: bool | None = None  # None: bars on a terminal, log lines otherwise
    # A lock is in use: items not pinned by it are resolved (never taken from the records) so
    # the lock can record what they resolved to.
    for_lock: bool = False
    # `provision lock`: resolve, and fetch only the files whose source publishes no hash.
    lock_only: bool = False
    # What to run when a locked file differs from its source ({item} is category/name).
    drift_hint: str | None = None
    mirror: str | None = None  # a content-addressed mirror asked first (mirror.py): URL or folder


@dataclass
class Outcome:
    results: list[ItemResult]
    # Per item (category/name) that ended well, its files: (download, checksum verified or
    # published, the engine's status or None when not fetched). What a lock records.
    resolved: dict[str, list[tuple[Download, Checksum | None, str | None]]]


@dataclass
class _Work:
    item: Item
    downloads: list[Download] = field(default_factory=list)
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    bytes: int = 0
    statuses: list[str] = field(default_factory=list)
    in_place: list[Path] | None = None  # recorded as done by an earlier run: no request needed
    # --update could not ask the source (this says why), but the recorded files are verified in
    # place: they stay, and the item counts as kept, not failed.
    kept: str | None = None
    checks: set[str] = field(default_factory=set)  # how its files were verified
    fetching: int = 0  # files handed to the engine
    fetched: dict[Path, tuple[Checksum | None, str]] = field(default_factory=dict)
    fetched_from: dict[Path, str] = field(default_factory=dict)  # per file: mirror, source or disk
    staged: Path | None = None  # a whole repository fetched into staging (staging.py)

    def final_path(self, path: Path) -> Path:
        """Where a file goes in the models folder (a staged repository's files are elsewhere first)."""
        return staging.final_path(self.item, self.staged, path) if self.staged else path

    def final(self, download: Download) -> Path:
        return self.final_path(download.dest)

    @property
    def files(self) -> list[Path]:
        return self.in_place if self.in_place is not None else [d.dest for d in self.downloads]

    @property
    def dest(self) -> Path:
        """The file, once its name is known; a whole repository's folder."""
        single = len(self.files) == 1 and not self.item.is_repository
        return self.files[0] if single else self.item.dest


def execute(items: list[Item], settings: RunSettings) -> Outcome:
    # One breaker for the whole run: a host found dead while resolving fails its downloads at once.
    settings = replace(settings, retry=settings.retry.for_one_run())
    # A connection kept per resolving thread (URLs resolve SMALL_JOBS at once).
    ctx = Context(retry=settings.retry, timeout=settings.timeout, session=new_session(pool_size=SMALL_JOBS))
    try:
        return _execute(items, settings, ctx)
    finally:
        ctx.session.close()


def _execute(items: list[Item], settings: RunSettings, ctx: Context) -> Outcome:
    work = [_Work(item) for item in items]
    verified, done_before = workspace_records(settings.workspace)
    if not (settings.dry_run or settings.update or settings.verify or settings.lock_only):
        for entry in work:
            if entry.item.locked is not None or not settings.for_lock:
                entry.in_place = done_before.in_place(entry.item.identity)
    pending = [entry for entry in work if entry.in_place is None]
    token_problems = check_tokens([entry.item for entry in pending], ctx)
    for entry in pending:
        if entry.item.source in token_problems:
            entry.error = token_problems[entry.item.source]

    def resolve_one(entry: _Work) -> None:
        if entry.error or entry.in_place is not None:
            return
        try:
            entry.downloads = resolve(entry.item, ctx)
        except SourceError as err:
            entry.error = redact(str(err))
        except Exception as err:  # a bug or an unexpected answer: one item fails, not the run
            log.debug(f"{entry.item.table}: resolving failed", exc_info=True)
            entry.error = f"unexpected error while resolving: {redact(f'{type(err).__name__}: {err}')}"

    urls = [entry for entry in work if entry.item.source == "url"]
    others = [entry for entry in work if entry.item.source != "url"]
    _run_all(resolve_one, (max(settings.jobs, SMALL_JOBS), urls), (max(settings.jobs, RESOLVE_JOBS), others))
    if settings.update and not (settings.dry_run or settings.lock_only or settings.force):
        _keep_what_is_in_place(work, done_before)
    _refuse_shared_destinations(work)

    if settings.dry_run:
        return Outcome([_planned(entry, verified) for entry in work], {})
    results = _fetch_all(work, settings, verified, done_before)
    resolved = {
        entry.item.key: [(d, *entry.fetched.get(d.dest, (d.checksum, None))) for d in entry.downloads]
        for entry in work
        if not entry.error and entry.in_place is None
    }
    return Outcome(results, resolved)


def _keep_what_is_in_place(work: list[_Work], done_before: ItemRecords) -> None:
    """--update with a source that cannot answer: an item whose files an earlier run verified
    stays as it is (the check for a newer version is what failed, not the item)."""
    for entry in work:
        if entry.error is None:
            continue
        recorded = done_before.in_place(entry.item.identity)
        if recorded is not None:
            entry.kept = f"in place as verified; could not check for a newer version: {entry.error}"
            entry.error, entry.in_place = None, recorded


def _refuse_shared_destinations(work: list[_Work]) -> None:
    """Names that servers chose can collide (the plan only caught names known in advance):
    two downloads into one .part would corrupt both, so the later item fails instead."""
    owners: dict[str, str] = {}
    for entry in work:
        if entry.error:
            continue
        for download in entry.downloads:
            dest = str(download.dest)
            if dest in owners and owners[dest] != entry.item.table:
                entry.error = (
                    f'same destination as {owners[dest]} ({dest}): give one of them another "filename"'
                )
                break
            owners.setdefault(dest, entry.item.table)


def _planned(entry: _Work, verified: VerifiedRecords) -> ItemResult:
    item = entry.item
    if entry.error:
        return ItemResult.for_item(item, FAILED, reason=entry.error)
    sizes = [d.expected_size for d in entry.downloads]
    size = None if None in sizes else sum(sizes)  # type: ignore[arg-type]
    on_disk = item_state([file_state(d, verified) for d in entry.downloads], size)
    return ItemResult.for_item(
        item,
        PLANNED,
        dest=entry.dest,
        on_disk=on_disk.label(size),
        have=on_disk.have,
        size=size,
        detail=item.detail,
        files=len(entry.downloads) if item.is_repository else None,
    )


def _fetch_all(
    work: list[_Work], settings: RunSettings, verified: VerifiedRecords, done_before: ItemRecords
) -> list[ItemResult]:
    for entry in work:
        if entry.kept is not None:
            entry.statuses = [KEPT] * len(entry.in_place or [])
            log.info(f"kept {entry.item.table}: in place as verified (why: at the end)")
        elif entry.in_place is not None:
            entry.statuses = [SKIPPED] * len(entry.in_place)
            log.info(f"skipped {entry.item.table}: in place as recorded (--update asks the source again)")
    engine = Engine(
        verified,
        connections=settings.connections,
        per_file=settings.per_file,
        retry=settings.retry,
        timeout=settings.timeout,
        verify=settings.verify,
        force=settings.force,
    )
    mirrored = mirror.for_run(settings.mirror, engine, verified, settings.retry)
    jobs = [
        (entry, download)
        for entry in work
        if not entry.error and entry.in_place is None
        for download in entry.downloads
        if not settings.lock_only or download.checksum is None
    ]
    for entry, _download in jobs:
        entry.fetching += 1
        if entry.fetching == 1 and not settings.lock_only:
            entry.staged = staging.stage(entry.item, entry.downloads, settings.workspace)
    # Biggest first: the longest transfers start at full speed and nothing big is left for last.
    jobs.sort(key=lambda job: -(job[1].expected_size or 0))
    engine.take_turns([download for _, download in jobs])
    expected = sum(d.expected_size or 0 for _, d in jobs)
    labels = {id(d): _shown(entry.final(d), settings.workspace) for entry, d in jobs}
    progress = ProgressFile(make_progress(settings.progress, expected, labels), settings.workspace, work)

    # The files of one repository run in parallel: their item's counters change under a lock.
    entry_lock = threading.Lock()

    def fetch_one(job: tuple[_Work, Download]) -> None:
        entry, download = job
        with entry_lock:
            first = entry.started is None
            if first:
                entry.started = time.monotonic()
        if first:
            # Relative to the models folder: the line fits a terminal, the folder is SD.Next's.
            target = (
                _shown(download.dest, settings.workspace)
                if len(entry.downloads) == 1
                else f"{_shown(entry.item.dest, settings.workspace)}/ ({len(entry.downloads)} files)"
            )
            (log.debug if settings.lock_only else log.info)(f"start {entry.item.table} -> {target}")
        error = None
        try:
            if mirrored is not None:
                result, came_from = mirrored.fetch(download, progress)
            else:
                result, came_from = engine.fetch(download, progress), None
        except FetchError as err:
            error = f"{download.dest.name}: {redact(str(err))}"
            if download.locked and settings.drift_hint:
                error += (
                    f"; the lock pins {entry.item.key} to these bytes: if the source changed them on"
                    f" purpose, run `{settings.drift_hint.format(item=entry.item.key)}`"
                )
        except OSError as err:
            if full := paths.disk_full(err):
                error = (
                    f"{download.dest.name}: the disk of {download.dest.parent} is {full}: free some space"
                    " or rent a bigger disk, then run again (what is on disk resumes)"
                )
            else:
                error = f"{download.dest.name}: {err.strerror or err}" + (
                    f" ({err.filename})" if err.filename else ""
                )
        if error is None and result.status == SKIPPED:
            progress.already_done(result.size)  # in place and verified: part of the total, done
        with entry_lock:
            if error is None:
                entry.bytes += result.bytes
                entry.statuses.append(result.status)
                entry.checks.add(result.verified)
                record = verified.lookup(download.dest)
                entry.fetched[download.dest] = (record.checksum if record else None, result.status)
                if came_from is not None:
                    entry.fetched_from[download.dest] = came_from
            else:
                entry.error = entry.error or error
                entry.statuses.append(FAILED)
            entry.finished = time.monotonic()
            last = len(entry.statuses) == entry.fetching
        if last and entry.staged is not None and not entry.error:
            staged = [d.dest for d in entry.downloads]
            staging.publish(entry.item, entry.downloads, entry.staged, verified)
            entry.fetched = {entry.final_path(p): v for p, v in entry.fetched.items() if p in staged}
            entry.fetched_from = {entry.final_path(p): v for p, v in entry.fetched_from.items()}
        if last:  # recorded before its line: an item said to be done is one a stop keeps as done
            if not entry.error and not settings.lock_only:
                done_before.store(entry.item.identity, entry.files)
            _log_end(entry, quiet=settings.lock_only)

    try:
        small = [job for job in jobs if engine.small(job[1])]
        big = [job for job in jobs if not engine.small(job[1])]
        _run_all(fetch_one, (settings.jobs, big), (SMALL_JOBS, small))
    except BaseException as stop:  # Ctrl-C or SIGTERM: every transfer saves its state and stops
        partial = engine.cancel() + (mirrored.cancel() if mirrored is not None else [])
        stop.partial_files = sorted(partial)  # type: ignore[attr-defined]  # for the one line the CLI prints
        raise
    finally:
        verified.flush()  # the records of the files verified since the last write
        done_before.flush()
        progress.close()
        engine.close()
        if mirrored is not None:
            mirrored.close()
    return [_fetched(entry, settings) for entry in work]


def _run_all(function, *lanes: tuple[int, list]) -> None:
    """function over each lane's inputs, `workers` at a time per lane, the lanes side by side.
    Interrupted, it returns at once instead of waiting for the calls under way
    (ThreadPoolExecutor's `with` would wait for each)."""
    pools = [(ThreadPoolExecutor(max_workers=workers), inputs) for workers, inputs in lanes if inputs]
    try:
        results = [pool.map(function, inputs) for pool, inputs in pools]
        for result in results:
            list(result)
    except BaseException:
        for pool, _inputs in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    for pool, _inputs in pools:
        pool.shutdown()


def _shown(path: Path, workspace: Path) -> str:
    """A destination as the log shows it: relative to the models folder when inside it."""
    try:
        return str(path.relative_to(paths.models_root(workspace)))
    except ValueError:
        return str(path)


def _log_end(entry: _Work, quiet: bool = False) -> None:
    """One line when an item ends; `quiet` (a lock): files in place are not worth a line each."""
    seconds = (entry.finished or 0) - (entry.started or 0)
    if entry.error:
        log.info(f"failed {entry.item.table} (why: at the end)")
    elif all(status == SKIPPED for status in entry.statuses):
        (log.debug if quiet else log.info)(f"skipped {entry.item.table}: already in place and verified")
    else:
        size = sum(d.dest.stat().st_size for d in entry.downloads if d.dest.exists())
        got = (
            "" if entry.bytes >= size else f" ({human_size(entry.bytes)} fetched now, the rest was in place)"
        )
        log.info(f"done {entry.item.table}: {human_size(size)}{got} in {seconds:.1f}s")


def _fetched(entry: _Work, settings: RunSettings) -> ItemResult:
    item = entry.item
    if entry.error:
        status = FAILED
    elif entry.kept is not None:
        status = KEPT
    elif entry.statuses and all(s == SKIPPED for s in entry.statuses):
        status = SKIPPED
    else:
        status = OK
    expected = {d.dest: d.expected_size for d in entry.downloads}
    sizes = [f.stat().st_size if f.exists() else expected.get(f) for f in entry.files]
    return ItemResult.for_item(
        item,
        status,
        dest=entry.dest,
        size=None if not sizes or None in sizes else sum(sizes),  # type: ignore[arg-type]
        bytes=entry.bytes,
        seconds=round((entry.finished or 0) - (entry.started or 0), 3) if entry.started else 0.0,
        reason=entry.error or entry.kept,
        files=len(entry.files) if item.is_repository else None,
        verified="records" if entry.in_place is not None else "+".join(sorted(entry.checks)) or None,
        fetched_from=_fetched_from(entry, settings) if settings.mirror else None,
    )


def _fetched_from(entry: _Work, settings: RunSettings) -> dict[str, str]:
    """Per file (relative to the models folder) where it came from, with a mirror in use."""
    origins = dict.fromkeys(entry.in_place or [], mirror.FROM_DISK) | entry.fetched_from
    return {_shown(path, settings.workspace): origin for path, origin in origins.items()}
