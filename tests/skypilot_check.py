"""Loads SkyPilot YAML files with SkyPilot's own code (schema, envs, secrets, resources, SkyServe
spec) and prints what a launch would run, as JSON. Run with the Python of tests/run.sh's
skypilot venv:  skypilot_check.py FILE... [--env K=V]... [--secret K=V]...
Every connection except to loopback is refused: the check needs no cloud and no network."""

from __future__ import annotations

import itertools
import json
import socket
import sys

_connect = socket.socket.connect


def _loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else None
    if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
        raise OSError(f"no network in this check (asked for {address})")
    return _connect(self, address)


socket.socket.connect = _loopback_only

import sky  # noqa: E402  (after the guard: SkyPilot may reach out at import)
import yaml  # noqa: E402


def main(argv: list[str]) -> int:
    files = [a for a in argv if "=" not in a and not a.startswith("--")]
    pairs = {"--env": {}, "--secret": {}}
    for flag, value in itertools.pairwise(argv):
        if flag in pairs:
            key, _, text = value.partition("=")
            pairs[flag][key] = text
    out = {}
    for path in files:
        with open(path) as file:
            config = yaml.safe_load(file)
        try:
            task = sky.Task.from_yaml_config(
                config, env_overrides=pairs["--env"], secrets_overrides=pairs["--secret"]
            )
        except Exception as err:  # SkyPilot's own message is the point
            out[path] = {"error": f"{type(err).__name__}: {err}"}
            continue
        service = task.service
        out[path] = {
            "setup": task.setup,
            "run": task.run,
            "secrets": sorted(task.secrets),
            "clouds": sorted({str(r.cloud) for r in task.resources}),
            "ports": sorted({p for r in task.resources for p in (r.ports or [])}),
            "readiness_path": service.readiness_path if service else None,
            "readiness_headers": service.readiness_headers if service else None,
        }
    json.dump(out, sys.stdout)
    return 1 if any("error" in v for v in out.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
