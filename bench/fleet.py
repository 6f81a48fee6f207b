"""Benchmark: a fleet of N hosts from one model lock, without and with a mirror.

    python bench/fleet.py [--hosts 8] [--scale-mib 8] [--origin-rate-mib 20]

Each host is a `provision CONFIG --locked` process with its own workspace, against the test
fakes (Hub, CivitAI, CDN) on loopback; the CDN sends each connection at most
`--origin-rate-mib` MiB/s (the sources' cap, 0: none). The set: a Hub LFS checkpoint (8 x
scale), a Hub small file, a CivitAI LoRA (2 x scale) and a plain URL's upscaler (1 x scale).

1. without a mirror: all N hosts at once, every one from the sources;
2. with a mirror: host 1 from the sources, `provision mirror DIR`, then hosts 2..N at once from
   `python -m http.server` over DIR (no cap: a mirror sits beside the fleet).

Prints per scenario the bytes the sources sent (goal with the mirror: one set, not N) and each
host's wall time. Not part of the test run; needs nothing beyond the project's test extras.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fleet import ModelSet, run_hosts, static_server  # noqa: E402

MiB = 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--scale-mib", type=int, default=8, help="the upscaler's size; the rest scales")
    parser.add_argument("--origin-rate-mib", type=float, default=20.0, help="per connection, 0: no cap")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        root = Path(tmp)
        for scenario in ("without mirror", "with mirror"):
            rows.append(run(scenario, root / scenario.replace(" ", "-"), args))
    size = rows[0][1]
    cap = f"{args.origin_rate_mib:g} MiB/s per connection" if args.origin_rate_mib else "none"
    print(f"\n{args.hosts} hosts, a set of {size / MiB:.1f} MiB, origin cap {cap}")
    print(f"{'scenario':<16} {'origin MiB':>10} {'sets':>5}  host wall seconds (host 1 first)")
    for scenario, size, origin, walls in rows:
        shown = " ".join(f"{w:5.2f}" for w in walls)
        print(f"{scenario:<16} {origin / MiB:>10.1f} {origin / size:>5.2f}  {shown}")
    return 0


def run(scenario: str, root: Path, args) -> tuple[str, int, int, list[float]]:
    models = ModelSet.serve(root / "config", scale_kib=args.scale_mib * 1024)
    models.cdn.rate = args.origin_rate_mib * MiB or None
    try:
        locker = ["lock", str(models.config), "--workspace", str(root / "locker")]
        subprocess.run(
            [sys.executable, "-m", "provision", *locker], env=models.env, check=True, capture_output=True
        )
        models.cdn.body_bytes = 0
        models.hub.requests.clear()
        workspaces = [root / f"host-{n}" for n in range(1, args.hosts + 1)]
        if scenario == "without mirror":
            hosts = run_hosts(models, workspaces)
        else:
            hosts = run_hosts(models, workspaces[:1])
            mirror = root / "mirror"
            fill = ["mirror", str(mirror), str(models.config), "--workspace", str(workspaces[0])]
            began = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "provision", *fill], env=models.env, check=True, capture_output=True
            )
            print(f"provision mirror: {time.monotonic() - began:.2f} s", file=sys.stderr)
            with static_server(mirror) as url:
                hosts += run_hosts(models, workspaces[1:], "--mirror", url)
        for host in hosts:
            if host.code != 0 or not models.verified(host.workspace):
                raise SystemExit(f"{scenario}: {host.workspace.name} failed:\n{host.text}")
        return scenario, models.size, models.origin_bytes(), [h.seconds for h in hosts]
    finally:
        models.stop()


def provision(models: ModelSet, *argv: str) -> None:
    command = [sys.executable, "-m", "provision", *argv]
    subprocess.run(command, env=models.env, check=True, capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
