"""The least a Python client that verifies every byte does per file: the floor under provision.

    python bench/floor.py OUT_DIR BASE_URL THREADS CLIENT NAME...

THREADS files at once, each one GET through a kept-alive connection of its thread (CLIENT
`requests`: a session, as provision; `http.client`: the standard library's connection, no
requests or urllib3 at all), the body read into a megabyte buffer, hashed with sha256, written
to `NAME.part`, fsynced and renamed. No metadata request, no resume state, no records, no
retries, no progress: what is left when all of provision's bookkeeping is taken away. bench/
run.py runs it beside aria2c in the small-file regimes, where per-file CPU decides the wall time
on a fast link, so the table shows how much of the distance to aria2c is the language's and how
much is ours.
"""

from __future__ import annotations

import hashlib
import http.client
import mmap
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import requests

MiB = 1024 * 1024


def main() -> None:
    out, base, threads, client, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]
    local = threading.local()

    def get(name: str):
        """The answer's readinto (http.client's, as provision reads) and its end."""
        if client == "requests":
            response = local.session.get(f"{base}/files/{name}", stream=True)
            response.raise_for_status()
            return response.raw._fp.readinto, response.close
        local.connection.request("GET", f"/files/{name}")
        response = local.connection.getresponse()
        if response.status != 200:
            raise SystemExit(f"{name}: {response.status}")
        return response.readinto, response.close

    def fetch(name: str) -> None:
        if not hasattr(local, "buffer"):
            local.session = requests.Session()
            local.connection = http.client.HTTPConnection(urlsplit(base).netloc)
            local.buffer = memoryview(mmap.mmap(-1, MiB, flags=mmap.MAP_PRIVATE))
        buffer, digest, offset = local.buffer, hashlib.sha256(), 0
        part = os.path.join(out, name + ".part")
        read_into, close = get(name)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while n := read_into(buffer):
                os.pwrite(fd, buffer[:n], offset)
                digest.update(buffer[:n])
                offset += n
            os.fsync(fd)
        finally:
            os.close(fd)
            close()
        os.replace(part, os.path.join(out, name))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fetch, names))


if __name__ == "__main__":
    main()
