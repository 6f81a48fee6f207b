"""`sdnext-refresh`: wait until SD.Next answers, then have it rescan its model folders.

The runtime's provision service runs it after a successful provisioning run, so models that
landed while SD.Next was starting (or already running) show up without a restart.

SD.Next's rescan endpoints change between releases: tag 2026-01-22 has refresh-checkpoints,
refresh-vae and refresh-loras (answering 200); refresh-unets came on 2026-03-22, and from
2026-06-16 all but refresh-loras answer 204 (the pinned 2026-07-14 among them). So the running
SD.Next is asked which it has (its /openapi.json), those are called, any 2xx counts, and a
folder with no endpoint is a note saying how its files become visible.
"""

from __future__ import annotations

import argparse
import sys
import time

import requests

from .categories import PIN

# The rescan endpoints of the pinned tag and the folders each covers, and the folders that have
# none (Text-encoder at 2026-07-14): sdnext_pin.toml.
RESCANS: dict[str, list[str]] = dict(PIN["rescans"])
UNCOVERED: list[str] = list(PIN["no-rescan"]["folders"])


def wait_for_status(base: str, timeout: float, interval: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{base}/sdapi/v1/status", timeout=10).status_code == 200:
                return True
        except requests.RequestException:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def available_rescans(base: str) -> set[str] | None:
    """The rescan endpoints this SD.Next lists in /openapi.json; None when it lists nothing."""
    try:
        response = requests.get(f"{base}/openapi.json", timeout=60)
        paths = response.json().get("paths", {}) if response.status_code == 200 else None
    except (requests.RequestException, ValueError, AttributeError):
        paths = None
    if not isinstance(paths, dict):
        return None
    return {name for name in RESCANS if f"/sdapi/v1/{name}" in paths}


def rescan(base: str, name: str, folders: list[str], listed: set[str] | None) -> bool:
    """Ask for one rescan; False only when this SD.Next has the endpoint and it failed."""
    covered = " and ".join(folders)
    absent = f"this SD.Next has no {name}: new {covered} files show after its UI's refresh or a restart"
    if listed is not None and name not in listed:
        say(absent)
        return True
    try:
        status = requests.post(f"{base}/sdapi/v1/{name}", timeout=300).status_code
    except requests.RequestException as err:
        say(f"{name}: {type(err).__name__}")
        return False
    if listed is None and status in (404, 405):
        say(absent)
        return True
    if 200 <= status < 300:
        say(f"{name}: {status} ({covered} rescanned)")
        return True
    say(f"{name}: failed with HTTP {status}")
    return False


def say(text: str) -> None:
    print(f"sdnext-refresh: {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdnext-refresh", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18010)
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds to wait for SD.Next (default 1800)"
    )
    args = parser.parse_args(argv)
    base = f"http://{args.host}:{args.port}"
    say(f"waiting for SD.Next at {base}/sdapi/v1/status")
    if not wait_for_status(base, args.timeout):
        say(f"SD.Next did not answer within {args.timeout:.0f}s; rescan skipped")
        return 1
    available = available_rescans(base)
    if available is None:
        say("SD.Next lists no API (/openapi.json): trying every rescan it has had")
    failed = sum(not rescan(base, name, folders, available) for name, folders in RESCANS.items())
    say(
        f"no rescan endpoint for {', '.join(UNCOVERED)} at tag {PIN['tag']}: new files there show"
        " after SD.Next's UI refresh or a restart (text encoders are read when a model loads)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
