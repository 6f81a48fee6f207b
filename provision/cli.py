"""`provision [CONFIG] [--dry-run] ...`: exit 0 all ok, 1 some item failed, 2 bad config or usage."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from . import categories, paths
from .config import ConfigError
from .configsource import default_source
from .console import EXIT_OK, EXIT_USAGE, guarded, positive, start_logging
from .core import DEFAULT_CONNECTIONS, DEFAULT_JOBS, Provisioner
from .report import FAILED, KEPT, error_json
from .secrets import redact, register_env_secrets
from .version import __version__

log = logging.getLogger("provision")


EPILOG = """\
examples:
  provision models.toml --dry-run --offline    lint: no network, nothing written
  provision lock models.toml                   pin every item in models.lock
  provision models.toml --locked               the locked files, or refuse
  provision status models.toml                 the model folders, file by file
                                               (exit 1: a file missing, changed)
  provision status models.toml --verify        also hash every file again
  provision clean                              remove stray .part.state files
  provision mirror /srv/mirror models.toml     the locked files by hash (fleets)
  provision models.toml --locked --mirror http://mirror:8080/
  PROVISION_URL=https://example.com/m.toml provision --jobs 3

environment:
  HF_TOKEN, CIVITAI_TOKEN   tokens, sent only to their own service, never logged
  GITHUB_TOKEN              private GitHub extensions (sent to GitHub only)
  WORKSPACE                 the workspace (default /workspace)
  PROVISION_URL             the config, when none is given
  PROVISION_LOCK_URL        its lock (same URL rules), unless --lock-file
  PROVISION_MIRROR          a mirror to ask first (URL or folder), or --mirror
  HF_ENDPOINT, CIVITAI_ENDPOINT, GDRIVE_ENDPOINT, GITHUB_ENDPOINT
                            other base URLs (mirrors, tests)
  SDNEXT_PYTHON             SD.Next's interpreter, for extensions' requirements
                            (default: sdnext-python on PATH, as in the image)
  HTTPS_PROXY, HTTP_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE, SSL_CERT_FILE
                            proxies and CA bundles, as curl and pip read them
  PROVISION_RETRY_BASE      seconds before the first retry (1)
  PROVISION_RETRY_ATTEMPTS  tries per request (8)
  PROVISION_READ_TIMEOUT    seconds without a byte: a stalled connection (30)
  PROVISION_PROGRESS_INTERVAL  seconds between progress lines in a log (15)
  PROVISION_CONFIG_DEADLINE seconds a remote config may take in all (60)

exit codes: 0 all ok, 1 some item failed (or the workspace is busy with
--no-wait), 2 bad config or command line, 130/143 interrupted (the same
command resumes)."""


class _Parser(argparse.ArgumentParser):
    """With --json on the command line, a usage error is a JSON object on stdout too."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            sys.stdout.write(error_json("usage", [message], EXIT_USAGE) + "\n")
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="provision",
        usage="%(prog)s [CONFIG] [options]\n       %(prog)s lock|status|clean ... (each has --help)",
        description="Download the models listed in a TOML file into the folders SD.Next reads.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "config",
        nargs="?",
        help="path, http(s) URL or Google Drive link of the TOML file (default: $PROVISION_URL)",
    )
    parser.add_argument("--dry-run", action="store_true", help="plan (and resolve) only; download nothing")
    parser.add_argument("--offline", action="store_true", help="with --dry-run: no network request at all")
    parser.add_argument(
        "--workspace",
        type=Path,
        help=f"workspace folder (default: $WORKSPACE, else {paths.DEFAULT_WORKSPACE}); models go to"
        " <workspace>/sdnext/models",
    )
    parser.add_argument(
        "--jobs",
        type=positive,
        default=DEFAULT_JOBS,
        help="files at once (default 5); files under 32 MiB go up to 32 at once beside them",
    )
    parser.add_argument(
        "--connections",
        type=positive,
        default=DEFAULT_CONNECTIONS,
        help=f"the most connections open at once, all hosts together; each host starts at 16 and"
        f" gets more while its rate keeps rising (default {DEFAULT_CONNECTIONS})",
    )
    parser.add_argument("--verify", action="store_true", help="re-hash files already in place")
    parser.add_argument(
        "--update",
        action="store_true",
        help="ask every source again, even for items recorded as in place (a moving revision such"
        " as main, a CivitAI model's newest version); default: trust the records, no request",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help="only the items whose category/name matches this glob (repeatable), e.g. 'lora/*'",
    )
    parser.add_argument(
        "--force", action="store_true", help="fetch again even what is in place (replaced when verified)"
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="fail at once when another provision is working on the workspace (default: wait for it)",
    )
    parser.add_argument(
        "--lock-file",
        help="the lock: a path or URL (default: beside the config, models.toml -> models.lock;"
        " $PROVISION_LOCK_URL when set)",
    )
    parser.add_argument(
        "--locked",
        action="store_true",
        help="refuse to run unless the lock exists and matches the config (CI, the image)",
    )
    parser.add_argument(
        "--mirror",
        metavar="URL",
        help="a mirror written by `provision mirror`, asked first for every file with a known hash:"
        " an http(s) URL or a folder (default: $PROVISION_MIRROR)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan/report as JSON on stdout")
    parser.add_argument(
        "--wide", action="store_true", help="tables with absolute paths and whole cells (default: 80 columns)"
    )
    parser.add_argument("--log-file", type=Path, help="log file (default: <workspace>/logs/provision.log)")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--quiet", "-q", action="store_true", help="console: errors only")
    noise.add_argument("--verbose", "-v", action="store_true", help="console: debug detail")
    parser.add_argument("--version", action="version", version=f"provision {__version__}")
    parser.add_argument(
        "--list-folders",
        action="store_true",
        help="print the model folders (relative to <workspace>/sdnext/models) and exit",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    register_env_secrets()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:
        from .status import main as status  # the model folders as SD.Next will see them

        return status(argv[1:])
    if argv[:1] == ["mirror"]:
        from .mirrorcli import main as fill_mirror  # `provision mirror DIR`: the lock's files by hash

        return fill_mirror(argv[1:])
    if argv[:1] == ["clean"]:
        from .clean import main as clean  # stray .part.state files

        return clean(argv[1:])
    if argv[:1] == ["lock"]:
        from .lockcli import main as lock  # `provision lock CONFIG`: write models.lock

        return lock(argv[1:])
    parser = build_parser()
    parser.json_errors = "--json" in argv  # type: ignore[attr-defined]
    args = parser.parse_args(argv)
    if args.list_folders:
        sys.stdout.write("".join(f"{folder}\n" for folder in categories.folders()))
        return EXIT_OK
    if args.offline and not args.dry_run:
        parser.error("--offline needs --dry-run (a real run downloads over the network)")
    config = args.config or default_source()
    if not config:
        parser.error("no config given: pass a path or URL, or set PROVISION_URL")
    mirror = None
    if mirror_given := args.mirror or os.environ.get("PROVISION_MIRROR"):
        from .mirror import Mirror  # the engine's imports: only for runs that use a mirror

        try:
            mirror = Mirror.parse(mirror_given)
        except ConfigError as err:
            parser.error(err.problems[0])

    provisioner = Provisioner(
        args.workspace,  # None: $WORKSPACE, else /workspace (the Provisioner decides)
        jobs=args.jobs,
        dry_run=args.dry_run,
        offline=args.offline,
        verify=args.verify,
        progress=False if args.quiet else None,
        connections=args.connections,
        wait=not args.no_wait,
        update=args.update,
        only=args.only,
        force=args.force,
        lock_file=args.lock_file or os.environ.get("PROVISION_LOCK_URL") or None,
        mirror=mirror.base if mirror is not None else None,
    )
    workspace = provisioner.workspace
    if workspace.exists() and not workspace.is_dir():
        parser.error(f"--workspace {workspace}: is a file, not a folder; give the workspace folder")
    # A dry-run writes nothing into the workspace unless a log file is asked for explicitly.
    log_file = args.log_file or (None if args.dry_run else paths.log_file(workspace))
    start_logging(log_file, args)
    log.debug(f"provision {__version__}: config={redact(config)} workspace={workspace}")
    report, failure = guarded(lambda: provisioner.run(config, locked=args.locked), workspace, args.json)
    if failure is not None:
        return failure

    if args.json:
        sys.stdout.write(report.to_json() + "\n")
    elif args.dry_run:
        sys.stdout.write(report.table(args.wide) + "\n")
    else:
        for line in report.final_table(args.wide).splitlines():
            log.info(line)
        if mirror is not None:
            from .mirror import shown_fetched_from

            for line in shown_fetched_from(report.results, mirror):
                log.info(line)
    if not args.dry_run:
        # Each failure said once, here at the end, one line per distinct reason.
        for line in report.reasons(KEPT):
            log.warning(line)
        for line in report.reasons(FAILED):
            log.error(line)
    log.info(report.summary())
    return report.exit_code
