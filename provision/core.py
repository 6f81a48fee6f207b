"""The pipeline, top to bottom: config -> plan -> sources -> fetch -> report.

`Provisioner` is the public, synchronous API; the CLI is a thin shell around it.
`ProvisioningSystem` keeps the names the earlier design documented.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
from pathlib import Path

from . import configsource, lockfile, paths
from .config import ConfigError, LintEnvironment, load_plan
from .configsource import read_config
from .http import TIMEOUT
from .ondisk import offline_state
from .plan import Extension, HuggingFaceSpec, Item, Plan
from .records import workspace_records
from .report import FAILED, PLANNED, ItemResult, Report
from .retry import RetryPolicy
from .secrets import redact, register_env_secrets
from .workspacelock import workspace_lock

log = logging.getLogger("provision")

DEFAULT_JOBS = 5
# The ceiling, in all, across files: each host starts with 16 and gets more only while its rate
# rises with them (slots.py). At a per-connection cap speed is the connection count, and any
# one file may use them all: aria2c's usual recipe (-x16 -j5) gives a 2 GiB file 16, so it
# cannot end before 2 GiB / (16 x the cap). With 16 MiB of read buffers in all (engine.py) and
# sessions that follow slots, peak memory stays under 64 MiB here; a fast uncapped link stays
# near 16 (more did not raise its rate) and pays nothing for the ceiling.
DEFAULT_CONNECTIONS = 64


class Provisioner:
    """Plans and downloads the models of one config into `<workspace>/sdnext/models`.

    >>> report = Provisioner(workspace="/workspace", jobs=5).run("models.toml")
    >>> report.exit_code   # 0 all ok, 1 some item failed; a bad config raises ConfigError

    A real run holds the workspace's lock: a second one waits for it (`wait=False`: raises
    WorkspaceBusy instead).
    """

    def __init__(
        self,
        workspace: str | Path | None = None,
        *,
        jobs: int = DEFAULT_JOBS,
        dry_run: bool = False,
        offline: bool = False,
        verify: bool = False,
        progress: bool | None = None,
        connections: int = DEFAULT_CONNECTIONS,
        retry: RetryPolicy | None = None,
        timeout: tuple[float, float] | None = None,
        wait: bool = True,
        update: bool = False,
        only: list[str] | None = None,
        force: bool = False,
        lock_file: str | Path | None = None,
        mirror: str | None = None,
    ):
        if jobs < 1 or connections < 1:
            raise ValueError("jobs and connections must be at least 1")
        if offline and not dry_run:
            raise ValueError("offline works only with dry_run (a real run needs the network)")
        self.workspace = Path(workspace or os.environ.get("WORKSPACE") or paths.DEFAULT_WORKSPACE).absolute()
        self.models_root = paths.models_root(self.workspace)
        self.jobs = jobs
        self.dry_run = dry_run
        self.offline = offline
        self.verify = verify
        self.progress = progress  # None: bars on a terminal, log lines otherwise
        self.connections = connections
        self.wait = wait  # for another run on the same workspace (False: WorkspaceBusy at once)
        # False: an item recorded as in place is done without a request (restarts work offline);
        # True: every item is resolved again, so a moving revision or "newest version" moves.
        self.update = update
        self.only = only or []  # globs over "category/name": the items to work on (all: empty)
        self.force = force  # fetch again even what is in place
        self.lock_file = lock_file  # a path or URL; None: beside the config (models.lock)
        # A content-addressed mirror (URL or folder) asked before the sources: mirror.py.
        self.mirror = mirror
        self.per_file = connections  # a file may use them all while no other file needs them
        self.retry = retry or RetryPolicy.from_env()
        # PROVISION_READ_TIMEOUT: seconds without a byte before a connection counts as stalled.
        self.timeout = timeout or (TIMEOUT[0], float(os.environ.get("PROVISION_READ_TIMEOUT", TIMEOUT[1])))
        register_env_secrets()

    def __enter__(self) -> Provisioner:
        return self

    def __exit__(self, *exc_info) -> None:
        """Nothing outlives a run (its sessions close when it ends): `with` only scopes it."""

    def plan(self, config: str | Path) -> Plan:
        """Read and validate the config; raises ConfigError listing every problem."""
        text, origin = read_config(str(config), offline=self.offline)
        log.debug(f"config read from {origin}")
        # An offline lint checks the config, not this machine's secrets: a missing variable warns.
        env = LintEnvironment(os.environ) if self.dry_run and self.offline else None
        plan = load_plan(text, models_root=self.models_root, origin=origin, env=env)
        if env is not None:
            plan.warnings.extend(env.warnings)
        plan.warnings.extend(same_source_twice(plan.items))
        for warning in plan.warnings:
            log.warning(f"warning: {warning}")
        return plan

    def lock_path(self, config: str | Path) -> str:
        """Where the config's lock is: `lock_file` if given, else beside the config."""
        return str(self.lock_file or lockfile.default_lock_path(str(config)))

    def run(self, config: str | Path, *, locked: bool = False) -> Report:
        """Plan, resolve and fetch. With a lock beside the config (or `lock_file`), its items
        are fetched exactly as locked, and the lock follows the config's added and removed
        items; `locked=True` refuses a lock that is missing or out of date instead."""
        if self.mirror:
            from .mirror import Mirror  # a wrong mirror is a ConfigError before any request

            Mirror.parse(self.mirror)
        plan = self.plan(config)
        lock, where = self._existing_lock(config)
        diff = lockfile.compare(lock, plan) if lock is not None else None
        if locked:
            _check_up_to_date(diff, where, config)
        if lock is not None:
            lockfile.attach(plan, lock)
            log.info(f"using the lock {where}" + (f" ({diff.describe()})" if not diff.up_to_date else ""))
        every_item, every_extension = list(plan.items), list(plan.extensions)
        if self.only:
            plan.items, plan.extensions = self._chosen(plan, self.only)
        report = Report(warnings=list(plan.warnings), dry_run=self.dry_run, models_root=self.models_root)
        runnable = self._preflight(plan.items, report)
        if self.dry_run and self.offline:
            _, done_before = workspace_records(self.workspace)
            for item in runnable:
                on_disk = offline_state(item.identity, item.dest, done_before)
                report.results.append(
                    ItemResult.for_item(
                        item, PLANNED, detail=item.detail, on_disk=on_disk.label(None), have=on_disk.have
                    )
                )
            report.results.extend(self._planned_extensions(plan.extensions))
        else:
            settings = self._settings(for_lock=lock is not None, drift_hint=self._upgrade_command(config))
            outcome = self._execute(runnable, settings)
            report.results.extend(outcome.results)
            installed = {}
            if self.dry_run:
                report.results.extend(self._planned_extensions(plan.extensions))
            elif plan.extensions or (
                not self.only and (paths.state_dir(self.workspace) / "extensions.json").exists()
            ):
                # With none left in the config, the run still drops removed ones' packages.
                results, installed = self._install_extensions(plan.extensions)
                report.results.extend(results)
            # --locked installs the lock as it is: it is up to date, and where it runs (a
            # Kubernetes ConfigMap, a CI checkout) it may be read-only, so it is never rewritten.
            if lock is not None and not self.dry_run and not locked and not configsource.is_remote(where):
                plan.items, plan.extensions = every_item, every_extension
                self._update_lock(lock, where, plan, outcome, config, installed)
        # Keep the config's order whatever order the work finished in (extensions after models).
        order = {(i.category, i.name): n for n, i in enumerate(every_item)}
        order.update({("extensions", e.name): len(order) + n for n, e in enumerate(every_extension)})
        report.results.sort(key=lambda r: order[(r.category, r.name)])
        if self.dry_run:
            report.free_bytes = free_space(self.models_root)
        return report

    def lock(self, config: str | Path, *, upgrade: bool = False) -> lockfile.Lock:
        """Resolve every item the lock does not pin yet (with `upgrade`: every item, or those
        matching `only`) and write the lock. Metadata only, except for files whose source
        publishes no sha256: those are hashed from disk when verified there, else downloaded
        into place. Raises LockFailed when an item cannot be resolved (nothing written)."""
        plan = self.plan(config)
        where = self.lock_path(config)
        if configsource.is_remote(where):
            raise ConfigError([f"{redact(where)}: a lock is written to a local file: give --lock-file PATH"])
        old = lockfile.read_lock(where) if Path(where).exists() else None
        if old is not None:
            again: list = []
            if upgrade and self.only:
                items, extensions = self._chosen(plan, self.only)
                again = [*items, *extensions]
            elif upgrade:
                again = [*plan.items, *plan.extensions]
            lockfile.attach(plan, old, except_names={i.key for i in again})
        report = Report(warnings=list(plan.warnings))
        pending = self._preflight([i for i in plan.items if i.locked is None], report)
        outcome = self._execute(pending, self._settings(lock_only=True, update=True, dry_run=False))
        report.results.extend(outcome.results)
        installed = {}
        if plan.extensions:  # the archive is the only way to its hashes and requirements: installed
            results, installed = self._install_extensions(plan.extensions)
            report.results.extend(results)
        if report.failed:
            raise LockFailed(report)
        new = lockfile.merged(old, plan, self._locked_files(plan, outcome), installed)
        lockfile.write_lock(Path(where), new, str(config))
        return new

    # --- the steps run and lock share -----------------------------------------------------------

    def _existing_lock(self, config: str | Path) -> tuple[lockfile.Lock | None, str]:
        where = self.lock_path(config)
        if self.lock_file is None and not Path(where).exists():
            return None, where
        if not configsource.is_remote(where) and not Path(where).exists():
            raise ConfigError([f"--lock-file {where}: no such file: create it with `provision lock`"])
        return lockfile.read_lock(where, offline=self.offline), where

    def _chosen(self, plan: Plan, patterns: list[str]) -> tuple[list[Item], list[Extension]]:
        """The items and extensions (`extensions/NAME`) that --only's patterns match."""
        items = [i for i in plan.items if any(fnmatch.fnmatch(i.key, p) for p in patterns)]
        extensions = [e for e in plan.extensions if any(fnmatch.fnmatch(e.key, p) for p in patterns)]
        if not items and not extensions:
            names = ", ".join([i.key for i in plan.items] + [e.key for e in plan.extensions])
            raise ConfigError([f"--only {' '.join(patterns)}: matches no item (the items: {names})"])
        return items, extensions

    def _install_extensions(self, extensions: list[Extension]):
        from . import extensions as installer  # archives, hashes and uv: only when the config has some

        with workspace_lock(paths.state_dir(self.workspace), wait=self.wait):
            return installer.install_all(extensions, self.workspace, update=self.update or self.force)

    def _planned_extensions(self, extensions: list[Extension]) -> list[ItemResult]:
        """Dry-run rows: in place means recorded as installed and still the same files."""
        from .extensions import Records, folder_of

        records = Records(self.workspace)
        rows = []
        for e in extensions:
            source = "github" if e.github else "url"
            row = ItemResult("extensions", e.name, source, str(folder_of(e, self.workspace)), PLANNED)
            row.on_disk = "in place" if records.in_place(e) else "missing"
            rows.append(row)
        return rows

    def _preflight(self, items: list[Item], report: Report) -> list[Item]:
        runnable: list[Item] = []
        lint = self.dry_run and self.offline
        if lint and not os.environ.get("CIVITAI_TOKEN") and any(i.source == "civitai" for i in items):
            # Not a failure: public CivitAI models download without a key, many others do not.
            warning = (
                "CIVITAI_TOKEN is not set: CivitAI items that need a login (most checkpoints,"
                " early access) will fail; create an API key in civitai.com's account settings"
            )
            log.warning(f"warning: {warning}")
            report.warnings.append(warning)
        for item in items:
            problem = preflight(item)
            if problem and self.mirror and item.locked is not None:
                problem = None  # the mirror needs no token; its source is asked only if it lacks the file
            if problem and self.dry_run and self.offline:
                # The lint passes a correct config; the token is this machine's business.
                log.warning(f"warning: {item.table}: {problem} (a real run fails this item until then)")
                report.warnings.append(f"{item.table}: {problem}")
                runnable.append(item)
            elif problem:
                report.results.append(ItemResult.for_item(item, FAILED, reason=problem))
            else:
                runnable.append(item)
        return runnable

    def _settings(self, **overrides):
        from .run import RunSettings  # the network half: sources and the engine

        values = {
            "workspace": self.workspace,
            "jobs": self.jobs,
            "connections": self.connections,
            "per_file": self.per_file,
            "retry": self.retry,
            "timeout": self.timeout,
            "dry_run": self.dry_run,
            "update": self.update or self.force,
            "verify": self.verify,
            "force": self.force,
            "progress": self.progress,
            "mirror": self.mirror,
        }
        return RunSettings(**{**values, **overrides})

    def _execute(self, items: list[Item], settings):
        from .run import execute

        if self.dry_run:
            return execute(items, settings)
        with workspace_lock(paths.state_dir(self.workspace), wait=self.wait):
            return execute(items, settings)

    def _locked_files(self, plan: Plan, outcome) -> dict[str, list[lockfile.LockedFile]]:
        """Lock entries for the items this run resolved (not those it took from the lock)."""
        unlocked = {i.key: i for i in plan.items if i.locked is None}
        entries = {
            name: lockfile.locked_files(unlocked[name], plan.models_root, files)
            for name, files in outcome.resolved.items()
            if name in unlocked
        }
        # One line for all files whose source publishes no sha256 (a line each made a first lock
        # print hundreds); each one is in the log file at debug level.
        counts = {lockfile.FROM_DISK: 0, lockfile.FROM_DOWNLOAD: 0}
        for files in entries.values():
            for file in files:
                if file.sha256_from in counts:
                    counts[file.sha256_from] += 1
                    log.debug(f"{file.item}: {file.path}: no sha256 published; hashed ({file.sha256_from})")
        if any(counts.values()):
            disk, downloaded = counts[lockfile.FROM_DISK], counts[lockfile.FROM_DOWNLOAD]
            log.info(
                f"no sha256 published for {disk + downloaded} file(s): hashed {disk} on disk,"
                f" downloaded {downloaded} to hash them"
            )
        return entries

    def _upgrade_command(self, config: str | Path) -> str:
        lock_file = f" --lock-file {redact(str(self.lock_file))}" if self.lock_file else ""
        return f"provision lock {redact(str(config))}{lock_file} --upgrade --only {{item}}"

    def _update_lock(self, lock: lockfile.Lock, where: str, plan: Plan, outcome, config, installed) -> None:
        new = lockfile.merged(lock, plan, self._locked_files(plan, outcome), installed)
        if new != lock:
            lockfile.write_lock(Path(where), new, str(config))
            extensions = f", {len(new.extensions)} extensions" if new.extensions else ""
            log.info(f"updated the lock {where}: {len(new.items)} items, {len(new.files)} files{extensions}")


class LockFailed(Exception):
    """Some item could not be resolved: no lock was written. `report` says which and why."""

    def __init__(self, report: Report):
        self.report = report
        super().__init__("; ".join(f"{r.category}/{r.name}: {r.reason}" for r in report.failed))


def _check_up_to_date(diff: lockfile.LockDiff | None, where: str, config: str | Path) -> None:
    if diff is None:
        raise ConfigError([f"--locked: there is no lock {where}: create it with `provision lock {config}`"])
    if not diff.up_to_date:
        raise ConfigError(
            [
                f"--locked: the lock {redact(where)} is out of date with the config ({diff.describe()}):"
                f" run `provision lock {redact(str(config))}` and commit the lock"
            ]
        )


def same_source_twice(items: list[Item]) -> list[str]:
    """Items that ask for the same thing under two names: each is downloaded (a copy each),
    which is rarely meant; a warning, since two folders may want the same file."""
    seen: dict[str, Item] = {}
    warnings = []
    for item in items:
        first = seen.setdefault(item.asked, item)
        if first is not item:
            warnings.append(
                f"{item.table} asks for the same file as {first.table}: it is downloaded twice;"
                " remove one of them unless both folders need it"
            )
    return warnings


def preflight(item: Item) -> str | None:
    """A reason this item cannot work, found before any request; None when it may."""
    spec = item.spec
    if isinstance(spec, HuggingFaceSpec) and spec.gated and not os.environ.get("HF_TOKEN"):
        from .sources.huggingface import gated_message  # only for gated items: a heavy import

        return gated_message(spec)
    return None


def free_space(path: Path) -> int | None:
    """Free bytes on the disk that holds `path` (its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return None


class ProvisioningSystem:
    """The earlier design's API, kept as thin synchronous aliases of `Provisioner`."""

    def __init__(self, workspace_dir: str | Path | None = None, **options):
        self.provisioner = Provisioner(workspace_dir, **options)

    def provision_from_file(self, path: str | Path) -> Report:
        return self.provisioner.run(path)

    def provision_from_url(self, url: str) -> Report:
        return self.provisioner.run(url)
