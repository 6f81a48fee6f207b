"""`sdnext-refresh`: wait until SD.Next answers, then have it rescan its model folders.

The runtime's provision service runs it after a successful provisioning run, so models that
landed while SD.Next was starting (or already running) show up without a restart.
"""

from __future__ import annotations

import argparse
import sys
import time

import requests

RESCANS = ("refresh-checkpoints", "refresh-vae", "refresh-loras", "refresh-unets")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdnext-refresh", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18010)
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds to wait for SD.Next (default 1800)"
    )
    args = parser.parse_args(argv)
    base = f"http://{args.host}:{args.port}"
    print(f"sdnext-refresh: waiting for SD.Next at {base}/sdapi/v1/status", flush=True)
    if not wait_for_status(base, args.timeout):
        print(
            f"sdnext-refresh: SD.Next did not answer within {args.timeout:.0f}s; rescan skipped", flush=True
        )
        return 1
    failed = 0
    for rescan in RESCANS:
        try:
            status = requests.post(f"{base}/sdapi/v1/{rescan}", timeout=300).status_code
        except requests.RequestException as err:
            status = type(err).__name__
        print(f"sdnext-refresh: {rescan}: {status}", flush=True)
        failed += status != 200
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
