"""Benchmark: provision a realistic model set from a loopback CDN and compare with the peers.

    python bench/run.py [--rate-mib 16] [--connections N] [--scale 1.0] [--skip-8g] [--data DIR]
                        [--server python|nginx] [--tls] [--slow-edge] [--only-engines] [--repeat N]
                        [--limit-conn N] [--no-range] [--small-files N [--no-big]] [--baseline DIR]
                        [--latency-ms N]

The set: one 2 GiB checkpoint, one 1 GiB text encoder, one 320 MiB VAE and four 150 MiB LoRAs,
served by bench/server.py with Range support and a per-connection rate cap (as a CDN has).
In the same run it measures:

- provision (this tool) with its defaults (connections follow the link up to its ceiling),
  and with --connections N when given;
- aria2c's usual recipe (-j 5 -x 16 -s 16: up to 16 connections per file, 5 files at once),
  and with provision's connection budget both ways (-j 2 -x N/2 -s N/2 and -j 1 -x N -s N),
  and with small files in the set its answer to many files (-j 16);
- with --baseline DIR, the provision of another checkout (main's, say) at its defaults;
- with small files in the set, provision with a lock made of the set (`--locked`: one GET per
  file, no metadata request, as every run after `provision lock` and in the image), and with
  only small files (`--no-big`) bench/floor.py, the least a Python client that hashes every
  byte does (no bookkeeping);
- huggingface_hub's hf_hub_download, eight files at once as `hf download` does, against the
  same server speaking the Hub's resolve protocol (python server);
- curl, one file after another, one stream each (what the earlier images did), once;
- provision again with everything in place (model bytes the server sent: should be 0);
- provision's peak memory on a 2 GiB file and on an 8 GiB file (flat in file size).

Each row: wall seconds, throughput, CPU seconds (user+sys of the process tree), peak RSS (from
/usr/bin/time, so each tool's own) and the requests the server served it. `--rate-mib 0` takes
the cap off (the regime of a fast link). Regimes: `--limit-conn N` lets a client have N requests at once
(nginx `limit_conn`, 503 beyond), `--no-range` ignores Range (nginx `max_ranges 0`; every
answer is the whole file, as olah's), `--small-files N` adds N files of 1.7 MiB to the set
(`--no-big`: only those), `--latency-ms N` makes every answer wait N ms before its first byte
(python server: a server that far away, where many small files cost round trips). Every
tool but curl runs once per round, `--repeat N` rounds taken in turn, in orders where each tool
follows each other equally often (a noisy moment, or the last tool's deleted output, hits
every tool alike), the median row of each shown; before each run the disk is synced, so none
pays for the last one's writes.
The tools write under $TMPDIR, whose filesystem the header names (tmpfs or a disk's).
`--server nginx --tls` serves HTTPS, as the Hub,
CivitAI and every CDN do: each tool then pays for decryption, and Python reads a TLS record
(at most 16 KiB) per call where plain HTTP fills a megabyte. Not part of the test run; needs
aria2c, curl and /usr/bin/time (apt-get install aria2 curl time), and openssl for --tls.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent
SET = [
    ("checkpoint.safetensors", 2048),
    ("text_encoder.safetensors", 1024),
    ("vae.safetensors", 320),
    *[(f"lora{n}.safetensors", 150) for n in range(1, 5)],
]


@dataclass
class Row:
    tool: str
    wall: float
    cpu: float
    peak_mib: float
    size: int
    note: str = ""
    requests: int = 0
    failed: bool = False

    @property
    def throughput(self) -> float:
        return self.size / MiB / self.wall if self.wall else 0.0


def make_file(path: Path, size_mib: int, seed: int) -> None:
    """Incompressible bytes that differ block by block, and their sha256 beside the file."""
    if (
        path.exists()
        and path.stat().st_size == size_mib * MiB
        and path.with_name(path.name + ".sha256").exists()
    ):
        return
    block = bytearray(os.urandom(MiB))
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        for n in range(size_mib):
            block[:16] = n.to_bytes(8, "little") + seed.to_bytes(8, "little")
            file.write(block)
            digest.update(block)
    path.with_name(path.name + ".sha256").write_text(digest.hexdigest())


def make_small_file(path: Path, size: int, seed: int) -> None:
    """A file smaller than one piece, and its sha256 beside it."""
    if path.exists() and path.stat().st_size == size and path.with_name(path.name + ".sha256").exists():
        return
    block = (seed.to_bytes(8, "little") + os.urandom(size))[:size]
    path.write_bytes(block)
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(block).hexdigest())


def measure(
    tool: str,
    command: list[str],
    size: int,
    stats,
    env: dict | None = None,
    note: str = "",
    *,
    peer: bool = False,
    cwd: Path | None = None,
) -> Row:
    """Wall, CPU and peak RSS of one tool's process tree, and the requests the server saw.
    /usr/bin/time forks the tool from its own small process: rusage straight from this one
    would report our own peak RSS for every child (Linux carries ru_maxrss across exec).
    A peer that fails (aria2c's usual recipe against `limit_conn`) is a row that says so;
    provision failing ends the run."""
    os.sync()  # the last tool's dirty pages reach the disk first: each starts from none
    requests_before = stats()[1]
    with tempfile.NamedTemporaryFile("r", suffix=".time") as timing:
        timed = ["/usr/bin/time", "-f", "%U %S %M", "-o", timing.name, *command]
        start = time.monotonic()
        result = subprocess.run(
            timed,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=cwd,
        )
        wall = time.monotonic() - start
        if result.returncode != 0 and not peer:
            raise SystemExit(f"{tool} failed ({result.returncode}): {result.stderr.decode()[-2000:]}")
        user, system, peak_kib = timing.read().split()[-3:]
    if result.returncode != 0:
        note = f"{note} FAILED (exit {result.returncode})".strip()
    row = Row(tool, wall, float(user) + float(system), int(peak_kib) / 1024, size, note)
    row.failed = result.returncode != 0
    row.requests = stats()[1] - requests_before
    return row


def self_signed_certificate(work: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, made for this run: every client is told to trust it."""
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def start_server(
    kind: str,
    data: Path,
    port: int,
    rate_mib: float,
    work: Path,
    tls: tuple[Path, Path] | None,
    slow_every: int,
    limit_conn: int = 0,
    no_range: bool = False,
    latency_ms: float = 0,
):
    """The file server and a function giving (body bytes sent, requests served) so far: bench/
    server.py (Python, also speaks the Hub's resolve protocol) or nginx (sendfile; the server
    costs next to no CPU, so an uncapped run measures the clients)."""
    base = f"http://127.0.0.1:{port}"
    if kind == "python":
        process = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "bench" / "server.py"),
                str(data),
                str(port),
                str(rate_mib * MiB),
                str(slow_every),
                "1" if no_range else "0",
                str(latency_ms),
            ]
        )

        def stats() -> tuple[int, int]:
            with urllib.request.urlopen(f"{base}/stats") as response:
                sent, served = response.read().split()
            return int(sent), int(served)

        return process, stats
    log = work / "nginx-access.log"
    limit = f"limit_rate {int(rate_mib * MiB)};" if rate_mib > 0 else ""
    limit += f" limit_conn perclient {limit_conn};" if limit_conn else ""
    limit += " max_ranges 0;" if no_range else ""
    zone = " limit_conn_zone $binary_remote_addr zone=perclient:1m;" if limit_conn else ""
    listen = f"127.0.0.1:{port}"
    if tls:
        listen += f" ssl; ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]}"
    (work / "nginx.conf").write_text(
        f"worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx-error.log;\n"
        "events {}\n"
        f"http {{ log_format bytes '$body_bytes_sent'; access_log {log} bytes; sendfile on;"
        f" client_body_temp_path {work}; proxy_temp_path {work}; fastcgi_temp_path {work};"
        f" uwsgi_temp_path {work}; scgi_temp_path {work};{zone}"
        f" server {{ listen {listen}; location /files/ {{ alias {data}/; {limit} }} }} }}\n"
    )
    process = subprocess.Popen(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)])

    def stats() -> tuple[int, int]:
        lines = log.read_text().split() if log.exists() else []
        return sum(int(n) for n in lines), len(lines)

    return process, stats


def check(folder: Path, data: Path, names: list[str]) -> None:
    for name in names:
        found = next(folder.rglob(name), None)
        if found is None:
            raise SystemExit(f"missing {name} under {folder}")
        digest = hashlib.sha256()
        with open(found, "rb") as file:
            while block := file.read(8 * MiB):
                digest.update(block)
        if digest.hexdigest() != (data / f"{name}.sha256").read_text().strip():
            raise SystemExit(f"{found}: wrong bytes")


def medians(rows: list[Row]) -> list[Row]:
    """One row per tool and setting: the run with the median wall time (in first-seen order)."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.tool, row.note), []).append(row)
    chosen = []
    for group in groups.values():
        ordered = sorted(group, key=lambda row: row.wall)
        middle = ordered[len(ordered) // 2]
        if len(group) > 1:
            middle.note = f"{middle.note} (median of {len(group)})".strip()
        chosen.append(middle)
    return chosen


def round_orders(n: int) -> list[list[int]]:
    """Orders of n tools for successive rounds, the first one as given, in which each tool
    comes right after each other one equally often once all are run (a Williams design, as
    crossover trials balance what a treatment carries over into the next; n odd needs each
    order reversed too, taken in turn here so a few rounds are already near balance)."""
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    rows = [[(i + shift) % n for i in first] for shift in range(n)]
    rows = rows if n % 2 == 0 else [order for row in rows for order in (row, row[::-1])]
    place = {tool: index for index, tool in enumerate(rows[0])}  # renamed: the first is 0, 1, ...
    return [[place[tool] for tool in row] for row in rows]


def filesystem(path: Path) -> str:
    """The kind of filesystem `path` is on (its mount with the longest matching prefix): where
    the tools write decides the small-file regimes (aria2c, one thread, took 0.5 s for 200
    files of 1.7 MiB on tmpfs and 0.9 s on this machine's ext4; provision 1.0 s on either)."""
    where, kind = "", "unknown"
    target = os.path.realpath(path).rstrip("/") + "/"
    for line in Path("/proc/mounts").read_text().splitlines():
        _device, mount, mount_kind, *_ = line.split()
        mount = mount.replace("\\040", " ").rstrip("/") + "/"
        if target.startswith(mount) and len(mount) >= len(where):
            where, kind = mount, mount_kind
    return kind


def warm(paths: list[Path]) -> None:
    """Read the served files once, so the first tool measured does not pay for the disk."""
    for path in paths:
        with open(path, "rb") as file:
            while file.read(8 * MiB):
                pass


def provision_config(base: str, names: list[str], path: Path) -> Path:
    lines = ["[models.checkpoints]"] + [f'{Path(n).stem} = "{base}/files/{n}"' for n in names]
    path.write_text("\n".join(lines) + "\n")
    return path


def provision_command(config: Path, workspace: Path, connections: int | None) -> list[str]:
    budget = ["--connections", str(connections)] if connections else []  # None: its default
    return [sys.executable, "-m", "provision", str(config), "--workspace", str(workspace), *budget, "-q"]


HF_SCRIPT = (  # eight files at once, as `hf download` (snapshot_download) fetches a repository
    "import sys\nfrom concurrent.futures import ThreadPoolExecutor\n"
    "from huggingface_hub import hf_hub_download\n"
    "with ThreadPoolExecutor(8) as pool:\n"
    "    list(pool.map(lambda n: hf_hub_download('bench/models', n, local_dir=sys.argv[1]), sys.argv[2:]))\n"
)


def hf_env(base: str, work: Path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": base,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HOME": str(work / "hf-home"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rate-mib", type=float, default=16.0, help="per-connection cap, MiB/s (default 16; 0: uncapped)"
    )
    parser.add_argument(
        "--connections", type=int, default=None, help="also run provision and aria2c at this budget"
    )
    parser.add_argument("--limit-conn", type=int, default=0, help="nginx: requests at once per client")
    parser.add_argument("--no-range", action="store_true", help="nginx: ignore Range (max_ranges 0)")
    parser.add_argument("--small-files", type=int, default=0, help="add this many 1.7 MiB files")
    parser.add_argument("--no-big", action="store_true", help="only the small files (with --small-files)")
    parser.add_argument(
        "--latency-ms", type=float, default=0, help="python server: each answer waits this long first"
    )
    parser.add_argument(
        "--baseline", type=Path, help="also measure the provision of this checkout (e.g. main's), same rounds"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="scale file sizes (0.1 for a quick try)")
    parser.add_argument("--skip-8g", action="store_true", help="skip the 2 GiB vs 8 GiB memory check")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "provision-bench-data")
    parser.add_argument("--port", type=int, default=18777)
    parser.add_argument(
        "--server",
        choices=("python", "nginx"),
        default="python",
        help="the file server (nginx: apt-get install nginx-light)",
    )
    parser.add_argument(
        "--only-engines", action="store_true", help="provision and aria2c only (no curl, no hf)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of provision and aria2c (medians)")
    parser.add_argument("--tls", action="store_true", help="HTTPS, self-signed certificate (nginx only)")
    parser.add_argument(
        "--slow-edge", action="store_true", help="one connection in 16 at a tenth of the cap (python only)"
    )
    args = parser.parse_args()
    if args.tls and args.server != "nginx":
        parser.error("--tls needs --server nginx (bench/server.py speaks plain HTTP)")
    if args.slow_edge and (args.server != "python" or args.rate_mib <= 0):
        parser.error("--slow-edge needs --server python and a rate cap (--rate-mib)")
    if args.limit_conn and args.server != "nginx":
        parser.error("--limit-conn needs --server nginx")
    if args.no_big and not args.small_files:
        parser.error("--no-big needs --small-files N")
    if args.latency_ms and args.server != "python":
        parser.error("--latency-ms needs --server python")

    data = args.data
    data.mkdir(parents=True, exist_ok=True)
    files = [] if args.no_big else [(name, max(1, int(size * args.scale))) for name, size in SET]
    print(f"preparing {sum(s for _, s in files)} MiB of test files in {data} ...", file=sys.stderr)
    for seed, (name, size) in enumerate(files):
        make_file(data / name, size, seed)
    for n in range(args.small_files):  # 1.7 MiB each: below one piece, as many LoRAs and configs
        name = f"small{n}.safetensors"
        make_small_file(data / name, 1_782_579, 1000 + n)
        files.append((name, 0))
    if not args.skip_8g:
        make_file(data / "big2g.safetensors", int(2048 * args.scale), 100)
        make_file(data / "big8g.safetensors", int(8192 * args.scale), 101)
    names = [name for name, _ in files]
    total = sum((data / n).stat().st_size for n in names)
    warm([data / n for n in names])

    scheme = "https" if args.tls else "http"
    base = f"{scheme}://127.0.0.1:{args.port}"
    work = Path(tempfile.mkdtemp(prefix="provision-bench-"))
    tls = self_signed_certificate(work) if args.tls else None
    trust = {"REQUESTS_CA_BUNDLE": str(tls[0])} if tls else {}  # provision's (requests') CA bundle
    ours_env = {"PYTHONPATH": str(REPO), **trust}
    slow_every = 16 if args.slow_edge else 0
    server, stats = start_server(
        args.server, data, args.port, args.rate_mib, work, tls, slow_every, args.limit_conn, args.no_range,
        args.latency_ms,
    )  # fmt: skip
    rows: list[Row] = []
    try:
        time.sleep(1.0)
        conns = args.connections

        def fresh(name: str) -> Path:
            folder = work / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            return folder

        config = provision_config(base, names, work / "models.toml")
        (work / "locked").mkdir()
        locked = provision_config(base, names, work / "locked" / "models.toml")  # its lock goes beside it
        (work / "aria2.txt").write_text("".join(f"{base}/files/{n}\n  out={n}\n" for n in names))
        hf_applies = not args.only_engines and args.server == "python"  # nginx: no Hub protocol
        baseline_env = {**ours_env, "PYTHONPATH": str(args.baseline)} if args.baseline else None

        def ours(round_: int) -> None:
            for budget in (None, conns) if conns else (None,):
                ws = fresh("provision")
                ours_cmd = provision_command(config, ws, budget)
                note = f"--connections {budget}" if budget else "defaults"
                rows.append(measure("provision", ours_cmd, total, stats, env=ours_env, note=note))
                check(ws, data, names)
            if round_ == 0:
                before = stats()[0]
                rerun = measure("provision (re-run)", ours_cmd, total, stats, env=ours_env)
                rerun.note = f"model bytes sent: {stats()[0] - before}"
                rerun.size = 0
                rows.append(rerun)
                if args.small_files:  # the lock of this set, its hashes taken from the files in place
                    lock = [
                        sys.executable,
                        "-m",
                        "provision",
                        "lock",
                        str(locked),
                        "--workspace",
                        str(ws),
                        "-q",
                    ]
                    subprocess.run(
                        lock, env={**os.environ, **ours_env}, check=True, stdout=subprocess.DEVNULL
                    )
            shutil.rmtree(ws)

        def ours_locked(_round: int) -> None:  # one GET per file, no metadata request
            ws = fresh("provision")
            locked_cmd = [*provision_command(locked, ws, None), "--locked"]
            rows.append(
                measure("provision (locked)", locked_cmd, total, stats, env=ours_env, note="--locked")
            )
            check(ws, data, names)
            shutil.rmtree(ws)

        def baseline(_round: int) -> None:
            ws = fresh("baseline")
            cmd = provision_command(config, ws, None)
            # From its own folder: `python -m` looks in the working directory first.
            env, cwd = baseline_env, args.baseline
            rows.append(measure("provision (baseline)", cmd, total, stats, env=env, note="defaults", cwd=cwd))
            check(ws, data, names)
            shutil.rmtree(ws)

        def aria2c(jobs: int, per_file: int, _round: int) -> None:
            out = fresh("aria2")
            options = ["-j", str(jobs), "-x", str(per_file), "-s", str(per_file)]
            aria2 = ["aria2c", "-i", str(work / "aria2.txt"), "-d", str(out), *options, "-k", "4M"]
            aria2 += ["--file-allocation=none", "--console-log-level=warn", "--summary-interval=0"]
            aria2 += ["--allow-overwrite=true", "--auto-file-renaming=false"]
            aria2 += [f"--ca-certificate={tls[0]}"] if tls else []
            rows.append(measure("aria2c", aria2, total, stats, note=" ".join(options), peer=True))
            if not rows[-1].failed:
                check(out, data, names)
            shutil.rmtree(out)

        def floor(client: str, _round: int) -> None:
            out = fresh("floor")
            command = [sys.executable, str(REPO / "bench" / "floor.py"), str(out), base, "16", client]
            row = measure("python floor", [*command, *names], total, stats, env=trust, peer=True)
            row.note = f"-j 16, {client}"
            rows.append(row)
            if not rows[-1].failed:
                check(out, data, names)
            shutil.rmtree(out)

        def hf(_round: int) -> None:
            out = fresh("hf")
            hf_cmd = [sys.executable, "-c", HF_SCRIPT, str(out), *names]
            rows.append(
                measure("hf_hub_download x8", hf_cmd, total, stats, env=hf_env(base, work), peer=True)
            )
            if not rows[-1].failed:
                check(out, data, names)
            shutil.rmtree(out)

        steps = [ours]
        steps += [ours_locked] if args.small_files else []
        steps += [baseline] if baseline_env is not None else []
        # aria2c's usual recipe, and its two ways to spend our budget: two files of N/2, or one of N;
        # for many small files, its answer to them: 16 files at once.
        recipes = [(5, 16)]
        if conns:
            recipes += [(2, max(1, min(16, conns // 2))), (1, min(conns, 16))]  # aria2c: -x 16 at most
        if args.small_files:
            recipes += [(16, 16)]
        steps += [functools.partial(aria2c, jobs, per_file) for jobs, per_file in recipes]
        if args.small_files and args.no_big:  # the floor of per-file work: no bookkeeping at all,
            # as many files at once as aria2c -j 16 (big files would go one stream each)
            steps += [
                functools.partial(floor, c)
                for c in (("requests", "http.client") if not tls else ("requests",))
            ]
        steps += [hf] if hf_applies else []
        # Rounds alternate, so a noisy moment hits every tool alike, in orders where every tool
        # follows every other equally often: a tool run right after another's output was deleted
        # pays for it (ext4 here: the same provision took 7.5-10.6 s right after aria2c's 4 GiB
        # went, 6.9-8.5 s after its own), and turning one order round keeps who follows whom.
        orders = round_orders(len(steps))
        for round_ in range(args.repeat):
            for index in orders[round_ % len(orders)]:
                steps[index](round_)
        rows = medians(rows)

        if not args.only_engines:
            out = fresh("curl")
            cacert = f"--cacert {tls[0]} " if tls else ""
            script = " && ".join(f"curl -sS --fail {cacert}-o {out / n} {base}/files/{n}" for n in names)
            rows.append(measure("curl (sequential)", ["sh", "-c", script], total, stats))
            check(out, data, names)
            shutil.rmtree(out)

        if not args.skip_8g:
            for name in ("big2g.safetensors", "big8g.safetensors"):
                ws = fresh("memory")
                config = provision_config(base, [name], work / "one.toml")
                cmd = provision_command(config, ws, conns)
                rows.append(
                    measure(
                        f"provision, {name.split('.')[0][3:]} file",
                        cmd,
                        (data / name).stat().st_size,
                        stats,
                        env=ours_env,
                    )
                )
                shutil.rmtree(ws)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)

    ours = rows[0]
    cap = f"per-connection cap {args.rate_mib:g} MiB/s" if args.rate_mib > 0 else "no rate cap"
    cap += ", one connection in 16 at a tenth of it" if args.slow_edge else ""
    cap += f", {args.server} over {'HTTPS' if tls else 'plain HTTP'}"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cap += f", limit_conn {args.limit_conn}" if args.limit_conn else ""
    cap += ", Range ignored" if args.no_range else ""
    cap += f", {args.latency_ms:g} ms before each answer" if args.latency_ms else ""
    print(
        f"\n{len(names)} files, {total / MiB:.0f} MiB, {cap}, connections {args.connections or 'default'},"
        f" written to {filesystem(work)} ({work.parent}), {os.cpu_count()} cores, load average {load}\n"
    )
    print("| tool | wall s | MiB/s | CPU s | peak MiB | requests | wall / provision | note |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        ratio = f"{row.wall / ours.wall:.2f}" if row.size else "-"  # a re-run moves no model bytes
        print(
            f"| {row.tool} | {row.wall:.1f} | {row.throughput:.0f} | {row.cpu:.1f} | {row.peak_mib:.0f} |"
            f" {row.requests} | {ratio} | {row.note} |"
        )
    by_tool = {row.tool: row for row in rows}
    print()
    working = [row for row in rows if row.tool == "aria2c" and not row.failed]
    best_aria2 = min(working, key=lambda row: row.wall) if working else None
    capped = " (target <= 0.9 at a per-connection cap)" if args.rate_mib > 0 else ""
    for options, target in (("-j 5 -x 16 -s 16", capped), ("-j 16 -x 16 -s 16", " (target <= 1)")):
        peer = next((row for row in working if row.note.startswith(options)), None)
        if peer is not None:
            print(f"provision / aria2c {options} wall: {ours.wall / peer.wall:.2f}{target}")
    if "hf_hub_download x8" in by_tool and not by_tool["hf_hub_download x8"].failed:
        hf = by_tool["hf_hub_download x8"]
        print(f"provision / hf_hub_download x8 wall: {ours.wall / hf.wall:.2f} (target <= 1.05, no Range)")
    floors = [row for row in rows if row.tool == "python floor" and ", requests" in row.note]
    if floors and not floors[0].failed:
        floor = floors[0].wall
        print(f"provision / python floor (requests) wall: {ours.wall / floor:.2f} (the part that is ours)")
        if "provision (locked)" in by_tool:
            locked_wall = by_tool["provision (locked)"].wall
            print(f"provision --locked / python floor (requests) wall: {locked_wall / floor:.2f}")
    if "provision (baseline)" in by_tool:
        baseline = by_tool["provision (baseline)"]
        print(
            f"provision / baseline: wall {ours.wall / baseline.wall:.2f}, CPU {ours.cpu / baseline.cpu:.2f},"
            f" peak memory {ours.peak_mib:.0f} vs {baseline.peak_mib:.0f} MiB"
        )
    if best_aria2 is not None:
        print(f"provision / best aria2c wall: {ours.wall / best_aria2.wall:.2f} (target <= 1)")
        print(f"provision / that aria2c CPU: {ours.cpu / best_aria2.cpu:.2f} (target <= 1.5)")
        print(f"provision / that aria2c requests: {ours.requests / best_aria2.requests:.2f} (target <= 2)")
    print(f"provision peak memory: {ours.peak_mib:.0f} MiB (target <= 64)")
    if "curl (sequential)" in by_tool:
        speedup = by_tool["curl (sequential)"].wall / ours.wall
        print(f"sequential curl / provision wall: {speedup:.1f}x (target >= 4)")
    if not args.skip_8g:
        small, large = by_tool["provision, 2g file"], by_tool["provision, 8g file"]
        print(
            f"peak memory 2 GiB vs 8 GiB: {small.peak_mib:.0f} vs {large.peak_mib:.0f} MiB"
            f" ({(large.peak_mib / small.peak_mib - 1) * 100:+.1f}%, target within 10%, under 150 MB)"
        )


if __name__ == "__main__":
    main()
