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

from . import paths
from .config import ConfigError, LintEnvironment, load_plan
from .configsource import read_config
from .http import TIMEOUT
from .ondisk import offline_state
from .plan import HuggingFaceSpec, Item, Plan
from .records import workspace_records
from .report import FAILED, PLANNED, ItemResult, Report
from .retry import RetryPolicy
from .secrets import register_env_secrets
from .workspacelock import workspace_lock

log = logging.getLogger("provision")

DEFAULT_JOBS = 5
DEFAULT_CONNECTIONS = 16  # in all, across files
PER_FILE_CONNECTIONS = 16  # a file may use them all while no other file needs them


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
        self.per_file = min(PER_FILE_CONNECTIONS, connections)
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
        for warning in plan.warnings:
            log.warning(f"warning: {warning}")
        return plan

    def run(self, config: str | Path) -> Report:
        plan = self.plan(config)
        if self.only:
            chosen = [
                i for i in plan.items if any(fnmatch.fnmatch(f"{i.category}/{i.name}", p) for p in self.only)
            ]
            if not chosen:
                names = ", ".join(f"{i.category}/{i.name}" for i in plan.items)
                raise ConfigError([f"--only {' '.join(self.only)}: matches no item (the items: {names})"])
            plan.items = chosen
        report = Report(warnings=list(plan.warnings), dry_run=self.dry_run)
        runnable: list[Item] = []
        for item in plan.items:
            problem = preflight(item)
            if problem and self.dry_run and self.offline:
                # The lint passes a correct config; the token is this machine's business.
                log.warning(f"warning: {item.table}: {problem} (a real run fails this item until then)")
                report.warnings.append(f"{item.table}: {problem}")
                runnable.append(item)
            elif problem:
                report.results.append(ItemResult.for_item(item, FAILED, reason=problem))
            else:
                runnable.append(item)
        if self.dry_run and self.offline:
            _, done_before = workspace_records(self.workspace)
            for item in runnable:
                on_disk = offline_state(item.identity, item.dest, done_before)
                report.results.append(
                    ItemResult.for_item(
                        item, PLANNED, detail=item.detail, on_disk=on_disk.label(None), have=on_disk.have
                    )
                )
        else:
            from .run import RunSettings, execute  # the network half: sources and the engine

            settings = RunSettings(
                workspace=self.workspace,
                jobs=self.jobs,
                connections=self.connections,
                per_file=self.per_file,
                retry=self.retry,
                timeout=self.timeout,
                dry_run=self.dry_run,
                update=self.update or self.force,
                verify=self.verify,
                force=self.force,
                progress=self.progress,
            )
            if self.dry_run:
                report.results.extend(execute(runnable, settings))
            else:
                with workspace_lock(paths.state_dir(self.workspace), wait=self.wait):
                    report.results.extend(execute(runnable, settings))
        # Keep the config's order whatever order the work finished in.
        order = {(i.category, i.name): n for n, i in enumerate(plan.items)}
        report.results.sort(key=lambda r: order[(r.category, r.name)])
        if self.dry_run:
            report.free_bytes = free_space(self.models_root)
        return report


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
