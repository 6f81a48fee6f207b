"""What the gateway costs a request: the runtime under real s6 and Caddy with the test stand-ins
(tests/runtime_harness.py), timed over kept-alive connections.

    PATH=.venv/sandbox-bin:.venv/bin .venv/bin/python bench/gateway.py [--requests 300]

Prints requests per second and milliseconds per request for: an app through the gateway with a
session (the guard's check, then the app), the same app directly, and a page the guard answers
itself (401 to a client without a login).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.runtime_harness import runtime_starter

TOKEN = "benchtoken0123456789abcdef"


def timed(label: str, session: requests.Session, url: str, count: int) -> None:
    session.get(url)  # the connection is open before the clock starts
    began = time.perf_counter()
    for _ in range(count):
        session.get(url)
    seconds = time.perf_counter() - began
    print(f"{label:<40} {count / seconds:7.0f} requests/s {1000 * seconds / count:7.2f} ms each")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root, runtime_starter(Path(root)) as start:
        runtime = start(PASSWORD="bench-password-123456", OPEN_BUTTON_TOKEN=TOKEN)
        user = requests.Session()
        user.get(runtime.url("sdnext", f"/?token={TOKEN}"), allow_redirects=False)  # a session
        direct = f"http://127.0.0.1:{runtime.internal['sdnext']}/bench"
        timed("app through the gateway (session)", user, runtime.url("sdnext", "/bench"), args.requests)
        timed("app directly", requests.Session(), direct, args.requests)
        refused = runtime.url("sdnext", "/")
        timed("guard's own answer (401, no login)", requests.Session(), refused, args.requests)


if __name__ == "__main__":
    main()
