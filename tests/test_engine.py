"""The engine against the CDN fake with every fault: what ends up on disk, and what never does."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import errno
import itertools
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from provision import hashing, partfile, transfer
from provision.download import Checksum, Download
from provision.engine import Engine, FetchError
from provision.ranges import Ranges
from provision.records import VerifiedRecords
from provision.retry import RetryPolicy

from .conftest import blob, sha256
from .fakes.cdn import Fault

MiB = 1024 * 1024
SIZE = 9 * 1024 * 1024 + 12345  # a first 4 MiB answer, then the rest
DATA = blob(SIZE, seed=11)
LARGE = blob(80 * 1024 * 1024 + 12345, seed=12)  # three pieces of 32 MiB, the last one short


@pytest.fixture
def engine(tmp_path):
    def make(**options) -> Engine:
        options.setdefault("retry", RetryPolicy(attempts=5, base=0.01))
        options.setdefault("timeout", (2, 1.0))
        return Engine(VerifiedRecords(tmp_path / "state" / "verified.json"), **options)

    return make


@pytest.fixture
def served(cdn):
    cdn.add("/m.safetensors", DATA)
    return cdn


def download(cdn, tmp_path, data=DATA, checksum=True, size=True, **kw) -> Download:
    return Download(
        url=f"{cdn.url}/m.safetensors",
        dest=tmp_path / "models" / "m.safetensors",
        size=len(data) if size else None,
        checksum=Checksum("sha256", sha256(data)) if checksum else None,
        identity="test:m",
        **kw,
    )


def range_starts(requests) -> list[int]:
    """Where each recorded request's Range begins."""
    return [int(r.headers["range"][6:].split("-")[0]) for r in requests]


def on_disk(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "models").iterdir())


def test_segmented_download_uses_several_ranges_and_verifies(engine, any_cdn, tmp_path):
    cdn = any_cdn
    cdn.add("/m.safetensors", LARGE)
    result = engine().fetch(download(cdn, tmp_path, data=LARGE))
    assert (result.status, result.bytes) == ("ok", len(LARGE)), "every byte written once"
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(LARGE)
    ranges = [r.headers.get("range") for r in cdn.requests]
    assert len(ranges) >= 3 and all(r and r.startswith("bytes=") for r in ranges)
    assert len({r.split("-")[0] for r in ranges}) == len(ranges), "no range asked for twice"
    assert on_disk(tmp_path) == ["m.safetensors"]


def test_a_connection_serves_piece_after_piece(engine, any_cdn, tmp_path):
    # Six pieces over two connections: each answer read to its end hands its connection on to
    # the next request instead of opening a new one (over HTTPS, a new TLS handshake each).
    cdn = any_cdn
    data = blob(6 * transfer.PIECE, seed=13)
    cdn.add("/m.safetensors", data)
    engine(connections=2, per_file=2).fetch(download(cdn, tmp_path, data=data))
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(data)
    got = [r for r in cdn.requests if r.method == "GET"]
    # The first answer's connection stays with the thread that asked for it: one more.
    assert len(got) >= 7 and len({r.peer for r in got}) <= 3


@pytest.mark.parametrize(
    ("fault", "logged"),
    [
        (Fault(reset_at=1_000_000), "the connection was reset"),
        (Fault(close_at=500_000), "the connection broke off"),  # a truncated body: Content-Length says more
        (Fault(status=500), "HTTP 500"),
        (Fault(status=502), "HTTP 502"),
        (Fault(status=429, retry_after="0"), "HTTP 429; retry 1 in 0.0s"),
        (Fault(stall_at=100_000, stall=2.0), "stalled or timed out"),  # silent past the read timeout
    ],
    ids=["reset", "truncated", "500", "502", "429", "stall"],
)
def test_transient_faults_are_retried_and_resumed(engine, any_cdn, tmp_path, fault, logged, caplog):
    served = any_cdn
    served.add("/m.safetensors", DATA)
    served.fault("/m.safetensors", dataclasses.replace(fault), Fault(status=503))  # a fault is used up
    if served.scheme == "https" and fault.reset_at:
        logged = "the connection broke off"  # over TLS a reset reads as the end of the body
    with caplog.at_level(logging.INFO, logger="provision"):
        result = engine().fetch(download(served, tmp_path))
    assert result.status == "ok"
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(DATA)
    assert logged in caplog.text and "HTTP 503" in caplog.text
    # Resumed, not restarted: little more than the file crossed the wire.
    assert served.body_bytes <= SIZE + 1_200_000


def test_retry_after_is_honoured(engine, served, tmp_path, caplog):
    served.fault("/m.safetensors", Fault(status=429, retry_after="2"))
    with caplog.at_level(logging.INFO, logger="provision"):
        engine().fetch(download(served, tmp_path))
    assert "HTTP 429; retry 1 in 2.0s" in caplog.text


@pytest.mark.parametrize("status", [401, 403, 404, 410])
def test_final_statuses_are_not_retried(engine, served, tmp_path, status):
    served.fault("/m.safetensors", Fault(status=status))
    with pytest.raises(FetchError, match=f"answered {status}"):
        engine().fetch(download(served, tmp_path))
    assert len(served.requests) == 1
    assert on_disk(tmp_path) == []


def test_explain_turns_a_status_into_advice(engine, served, tmp_path):
    served.fault("/m.safetensors", Fault(status=401))
    d = download(served, tmp_path, explain=lambda status: f"set THE_TOKEN ({status})")
    with pytest.raises(FetchError, match=r"set THE_TOKEN \(401\)"):
        engine().fetch(d)


def test_persistent_5xx_gives_up_with_the_reason(engine, served, tmp_path):
    served.fault("/m.safetensors", *[Fault(status=503)] * 10)
    with pytest.raises(FetchError, match=r"gave up after 5 attempts \(HTTP 503\)"):
        engine().fetch(download(served, tmp_path))
    assert "m.safetensors" not in on_disk(tmp_path)


def test_server_that_ignores_range_gets_one_stream(engine, cdn, tmp_path):
    cdn.add("/m.safetensors", DATA, ignore_range=True)
    assert engine().fetch(download(cdn, tmp_path)).status == "ok"
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(DATA)
    assert cdn.body_bytes == SIZE  # one whole stream, no duplicate pieces


def test_a_part_from_an_earlier_run_is_never_appended_to_when_range_is_ignored(engine, served, tmp_path):
    # A first run stops half-way ...
    served.fault("/m.safetensors", *[Fault(close_at=0)] * 40)
    with pytest.raises(FetchError):
        engine(retry=RetryPolicy(attempts=2, base=0.01)).fetch(download(served, tmp_path))
    served.faults.clear()
    # ... the next one starts from the .part, but now the server ignores Range: start over.
    partial = tmp_path / "models" / "m.safetensors.part"
    state = json.loads((tmp_path / "models" / "m.safetensors.part.state").read_text())
    served.files["/m.safetensors"].ignore_range = True
    assert partial.exists() and state["total"] == SIZE
    assert engine().fetch(download(served, tmp_path)).status == "ok"
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(DATA)


def test_if_range_restarts_when_the_file_changed_between_runs(engine, served, tmp_path, caplog):
    served.fault("/m.safetensors", Fault(close_at=2_000_000), *[Fault(status=503)] * 20)
    with pytest.raises(FetchError):
        engine(retry=RetryPolicy(attempts=2, base=0.01), per_file=1).fetch(
            download(served, tmp_path, checksum=False)
        )
    served.faults.clear()
    new = blob(SIZE, seed=99)
    served.add("/m.safetensors", new)  # same size, new ETag
    caplog.set_level(logging.WARNING, logger="provision")
    engine().fetch(download(served, tmp_path, data=new))
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(new)
    assert "the file changed on the server since the partial download (If-Range)" in caplog.text
    assert "Range; starting" not in caplog.text and "ignored Range" not in caplog.text


def test_wrong_bytes_fail_with_both_hashes_and_never_take_the_final_name(engine, cdn, tmp_path):
    cdn.add("/m.safetensors", DATA, wrong_bytes=True)
    with pytest.raises(FetchError) as err:
        engine().fetch(download(cdn, tmp_path))
    assert f"checksum mismatch: expected sha256:{sha256(DATA)}, got sha256:" in str(err.value)
    assert on_disk(tmp_path) == []  # the bad .part is gone too


def test_size_mismatch_is_refused(engine, served, tmp_path):
    d = download(served, tmp_path, checksum=False)
    d.size = SIZE + 1
    with pytest.raises(FetchError, match=f"offers {SIZE} bytes, but the source says {SIZE + 1}"):
        engine().fetch(d)
    assert "m.safetensors" not in on_disk(tmp_path)


def test_a_correct_existing_file_is_hashed_once_then_skipped_without_reading(
    engine, served, tmp_path, monkeypatch
):
    dest = tmp_path / "models" / "m.safetensors"
    dest.parent.mkdir()
    dest.write_bytes(DATA)
    assert engine().fetch(download(served, tmp_path)).status == "skipped"
    assert served.requests == []
    import provision.engine as engine_module

    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed again")

    monkeypatch.setattr(engine_module, "hash_file", no_hashing)
    assert engine().fetch(download(served, tmp_path)).status == "skipped"
    with pytest.raises(AssertionError, match="hashed again"):
        engine(verify=True).fetch(download(served, tmp_path))


def test_a_wrong_existing_file_is_replaced(engine, served, tmp_path):
    dest = tmp_path / "models" / "m.safetensors"
    dest.parent.mkdir()
    dest.write_bytes(blob(SIZE, seed=5))  # right size, wrong bytes
    assert engine().fetch(download(served, tmp_path)).status == "ok"
    assert sha256(dest.read_bytes()) == sha256(DATA)


def test_verify_catches_a_file_changed_behind_our_back(engine, served, tmp_path):
    d = download(served, tmp_path)
    engine().fetch(d)
    dest = d.dest
    stat = dest.stat()
    with open(dest, "r+b") as file:  # bit rot: same size, same mtime
        file.seek(100)
        file.write(b"\x00\x01\x02")
    os.utime(dest, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert engine().fetch(d).status == "skipped"  # the record still matches
    assert engine(verify=True).fetch(d).status == "ok"  # re-hashed, found wrong, replaced
    assert sha256(dest.read_bytes()) == sha256(DATA)


def test_no_space_is_refused_before_any_request(engine, served, tmp_path):
    d = download(served, tmp_path, size=False, checksum=False)
    d.size_hint = 1 << 60
    with pytest.raises(FetchError, match="not enough disk space: needs"):
        engine().fetch(d)
    assert served.requests == []


def test_writes_that_take_only_part_of_their_bytes_are_completed(engine, cdn, tmp_path, monkeypatch):
    """A write may take fewer bytes than given (a disk filling up, FUSE, a network filesystem):
    the rest is written, never counted as on disk unwritten."""
    real_pwrite = os.pwrite

    def short(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            data = data[: max(1, len(data) // 3)]
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", short)
    cdn.add("/m.safetensors", LARGE)
    result = engine().fetch(download(cdn, tmp_path, data=LARGE))
    assert (result.status, result.bytes) == ("ok", len(LARGE))
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(LARGE)


def niceness_of_threads() -> list[int]:
    """The niceness of each thread of this process (field 19 of /proc/self/task/TID/stat)."""
    found = []
    for stat in Path("/proc/self/task").glob("*/stat"):
        with contextlib.suppress(OSError):  # a thread that just ended
            found.append(int(stat.read_text().rsplit(")", 1)[1].split()[16]))
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="threads have their own niceness on Linux only")
def test_receivers_run_nicer_than_the_hashing_so_the_hash_keeps_up(engine, cdn, tmp_path, monkeypatch):
    cdn.add("/m.safetensors", LARGE)
    cdn.gate = threading.Event()  # the piece workers wait for their bodies
    base = os.getpriority(os.PRIO_PROCESS, 0)
    hashing_at = []  # a thread is as nice as the one that starts it: not a receiver
    follow = hashing.PrefixHasher._follow

    def recorded(self):
        hashing_at.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        follow(self)

    monkeypatch.setattr(hashing.PrefixHasher, "_follow", recorded)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fetching = pool.submit(engine(connections=3, per_file=3).fetch, download(cdn, tmp_path, data=LARGE))
        lowered = base + transfer.RECEIVER_NICENESS
        deadline = time.monotonic() + 30  # until the three receivers wait for their bodies
        while time.monotonic() < deadline:
            niceness = niceness_of_threads()
            if len(cdn.requests) >= 3 and niceness.count(lowered) >= 3:
                break
            time.sleep(0.01)
        cdn.gate.set()
        assert fetching.result(timeout=60).status == "ok"
    assert niceness.count(lowered) == 3, niceness  # the three receivers
    assert hashing_at == [base]  # the file's hasher: as the file's own thread, not lowered


def test_unknown_size_single_stream(engine, any_cdn, tmp_path):
    cdn = any_cdn
    cdn.add("/m.safetensors", DATA, ranges=False)
    result = engine().fetch(download(cdn, tmp_path, size=False, checksum=False))
    assert result.status == "ok" and (tmp_path / "models" / "m.safetensors").read_bytes() == DATA


def test_empty_file(engine, any_cdn, tmp_path):
    cdn = any_cdn
    cdn.add("/m.safetensors", b"")
    assert engine().fetch(download(cdn, tmp_path, data=b"")).status == "ok"
    assert (tmp_path / "models" / "m.safetensors").read_bytes() == b""


def test_connection_cap_is_respected(engine, cdn, tmp_path):
    import threading

    cdn.add("/m.safetensors", LARGE)
    cdn.rate = 32 * 1024 * 1024
    eng = engine(connections=2, per_file=8)
    open_responses, peak, lock = [0], [0], threading.Lock()
    original_open = eng.open

    def counting_open(d, headers):
        response = original_open(d, headers)
        with lock:
            open_responses[0] += 1
            peak[0] = max(peak[0], open_responses[0])
        close = response.close

        def counted_close():
            with lock:
                open_responses[0] -= 1
            close()

        response.close = counted_close
        return response

    eng.open = counting_open
    eng.fetch(download(cdn, tmp_path, data=LARGE))
    assert peak[0] == 2


def test_ranges_merge_and_gaps():
    ranges = Ranges([[10, 20], [0, 5]])
    ranges.add(5, 10)
    ranges.add(30, 40)
    assert ranges.spans == [[0, 20], [30, 40]]
    assert ranges.gaps(50) == [(20, 30), (40, 50)]
    assert (ranges.covered(), ranges.prefix_end()) == (30, 20)
    # Inside a piece: never a byte outside it, never an empty range.
    assert ranges.missing(15, 35) == [(20, 30)]
    assert ranges.gaps(25) == [(20, 25)]
    assert ranges.missing(25, 25) == [] and ranges.missing(32, 38) == []


def test_space_check_counts_what_a_sparse_part_really_holds(engine, served, tmp_path, monkeypatch):
    # A .part from an earlier run is preallocated to the full size but holds only a few bytes:
    # the check must still ask for (nearly) the whole file.
    import provision.engine as engine_module

    d = download(served, tmp_path)
    d.dest.parent.mkdir()
    with open(d.dest.with_name("m.safetensors.part"), "wb") as part:
        part.truncate(SIZE)
    free = engine_module.DISK_MARGIN + SIZE // 2  # room for half the file only
    monkeypatch.setattr(engine_module.shutil, "disk_usage", lambda path: type("U", (), {"free": free})())
    with pytest.raises(FetchError, match="not enough disk space"):
        engine().fetch(d)


def test_a_part_holds_its_blocks_from_the_start_or_is_sparse_where_the_filesystem_cannot(
    engine, served, tmp_path, monkeypatch
):
    d = download(served, tmp_path)
    d.dest.parent.mkdir()
    part = partfile.PartFile(d.dest)
    part.create(SIZE)
    # fallocate: tmpfs, ext4, xfs
    assert part.path.stat().st_size == SIZE and partfile.unheld(part.path, SIZE) == 0

    def without_fallocate(fd, mode, offset, length):  # NFS before 4.2, some FUSE mounts
        ctypes.set_errno(errno.EOPNOTSUPP)
        return -1

    monkeypatch.setattr(partfile, "_fallocate", lambda: without_fallocate)
    part.create(SIZE)
    assert part.path.stat().st_size == SIZE and partfile.unheld(part.path, SIZE) > 0
    assert engine().fetch(d).status == "ok"
    assert sha256(d.dest.read_bytes()) == sha256(DATA)


@pytest.mark.parametrize("checksum", [True, False], ids=["published-sha256", "no-checksum"])
def test_a_range_answered_from_another_offset_is_never_written(engine, served, tmp_path, caplog, checksum):
    # The server says honestly (Content-Range) that it sent other bytes than asked: without a
    # published checksum nothing else would notice, so the answer is refused and asked again.
    served.fault("/m.safetensors", Fault(shift=4096), Fault(), Fault(shift=1))
    caplog.set_level(logging.INFO, logger="provision")
    result = engine().fetch(download(served, tmp_path, checksum=checksum))
    assert result.status == "ok"
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(DATA)
    assert "the server answered bytes 4096-" in caplog.text and "to a request for bytes 0-" in caplog.text


def test_a_range_answered_shorter_than_asked_is_completed(engine, served, tmp_path):
    served.fault("/m.safetensors", *[Fault(shorten=100_000)] * 4)
    result = engine().fetch(download(served, tmp_path, checksum=False))
    assert result.status == "ok"
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(DATA)


def test_an_answer_cut_inside_its_headers_is_retried(engine, served, tmp_path, caplog):
    served.fault("/m.safetensors", Fault(cut_headers=True), Fault(cut_headers=True))
    caplog.set_level(logging.INFO, logger="provision")
    result = engine().fetch(download(served, tmp_path))
    assert result.status == "ok"
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(DATA)
    assert "retry 1" in caplog.text


def test_a_file_whose_connections_all_went_to_an_earlier_one_is_reported_waiting(engine, served, tmp_path):
    import threading

    from provision.engine import Progress
    from provision.transfer import Transfer

    events: list[bool] = []
    changed = threading.Event()

    class Recorder(Progress):
        def file_waiting(self, download, waiting):
            events.append(waiting)
            changed.set()

    shared = engine(connections=1)
    earlier = next(shared._priorities)  # a file that started before this one holds the only slot
    shared.slots.acquire(earlier)
    transfer = Transfer(shared, download(served, tmp_path), Recorder(), segmented=True)
    transfer.announced = True  # its bar is on screen
    worker = threading.Thread(target=transfer._take_slot)
    worker.start()
    assert changed.wait(30) and events == [True]  # no connection and one wanted: waiting
    changed.clear()
    shared.slots.release()  # the earlier file is done
    worker.join(30)
    assert changed.wait(30) and events == [True, False] and transfer.connections == 1


def test_an_idle_connection_takes_the_back_half_of_a_slow_piece(engine, cdn, tmp_path, monkeypatch):
    """Work stealing: one piece's connection stalls; another finishes its own, then splits
    what the slow one has not asked for yet and fetches the back half, then the back of what
    it asked for. Only what was on its way when that request was cut is sent twice."""
    monkeypatch.setattr(transfer, "MIN_PIECE", transfer.PIECE)  # pieces of PIECE
    monkeypatch.setattr(transfer, "TAIL_SHARE", 1000)  # after the first, every request asks 8 MiB
    cdn.add("/m.safetensors", LARGE)
    cdn.fault("/m.safetensors", Fault(), Fault(stall_at=1024 * 1024, stall=2.0))
    result = engine(timeout=(2, 10.0)).fetch(download(cdn, tmp_path, data=LARGE))
    assert (result.status, result.bytes) == ("ok", len(LARGE)), "every byte written once"
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(LARGE)
    starts = sorted(range_starts(cdn.requests))
    step = 8 * 1024 * 1024
    assert any(start % step for start in starts), f"no one took the stalled piece's back half: {starts}"
    assert len(LARGE) <= cdn.body_bytes < len(LARGE) + step, "more than one request's worth sent twice"


def test_a_slow_connection_has_the_back_of_its_request_taken_over(engine, cdn, tmp_path):
    # One CDN connection runs at a thirty-second of the others' speed. The idle connection that
    # finished its own pieces takes the back of the slow one's request, which then ends where
    # the other begins, instead of holding the file up for 16 s (32 MiB at 2 MiB/s).
    piece = transfer.PIECE
    data = blob(3 * piece, seed=16)
    cdn.add("/m.safetensors", data)
    cdn.rate = 64 * MiB
    cdn.fault("/m.safetensors", Fault(rate=2 * MiB))  # the first answer: bytes 0 to 32 MiB
    result = engine(connections=2, per_file=2).fetch(download(cdn, tmp_path, data=data))
    assert (result.status, result.bytes) == ("ok", len(data))
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(data)
    starts = range_starts(r for r in cdn.seen("/m.safetensors") if r.method == "GET")
    assert any(0 < start < piece for start in starts), f"no one took over the slow request's back: {starts}"
    assert cdn.body_bytes < len(data) + 4 * MiB, "only what was on its way is sent twice"


def test_with_one_connection_each_piece_is_one_request(engine, cdn, tmp_path):
    # A file's tail is asked in shares so that its other connections can take a rest; with
    # `--connections 1` there are none, and 80 MiB is 3 requests, not 6.
    cdn.add("/m.safetensors", LARGE)
    engine(connections=1).fetch(download(cdn, tmp_path, data=LARGE))
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(LARGE)
    asked = [r.headers["range"] for r in cdn.seen("/m.safetensors") if r.method == "GET"]
    assert len(asked) == -(-len(LARGE) // transfer.PIECE), asked


def test_while_another_file_waits_for_a_connection_requests_are_fewer_and_longer(engine, cdn, tmp_path):
    # Toward a file's end a request asks for a share of what is left, so that an idle
    # connection can take the rest. With another file waiting for a connection none will be
    # idle, and that file's download overlaps this one's hash: queued pieces are joined up to
    # CONTENDED_PIECE and each is asked for whole, except the last per_file pieces (a long
    # request there could end a run alone). 5 pieces, one connection: 4 requests (one per
    # piece took 5; split near the end, 8).
    piece = transfer.PIECE
    data = blob(5 * piece, seed=15)
    cdn.add("/m.safetensors", data)
    other = blob(piece, seed=14)  # not smaller than a piece: it waits its turn
    cdn.add("/other.bin", other)
    cdn.gate = threading.Event()  # the first body waits until the second file waits for a slot
    eng = engine(connections=1, per_file=1)
    first = download(cdn, tmp_path, data=data)
    second = Download(
        url=f"{cdn.url}/other.bin", dest=tmp_path / "models" / "other.bin", size=len(other), identity="test:o"
    )
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        big = pool.submit(eng.fetch, first)
        deadline = time.monotonic() + 10
        while not cdn.seen("/m.safetensors") and time.monotonic() < deadline:
            time.sleep(0.01)
        small = pool.submit(eng.fetch, second)
        while not eng.slots.contended(besides=0) and time.monotonic() < deadline:
            time.sleep(0.01)
        cdn.gate.set()
        assert (big.result().status, small.result().status) == ("ok", "ok")
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(data)
    asked = [r.headers["range"] for r in cdn.seen("/m.safetensors") if r.method == "GET"]
    ends = [0, 1, 3, 4, 5]  # in pieces: the first, two joined, then the last one (per_file) alone
    assert asked == [f"bytes={a * piece}-{b * piece - 1}" for a, b in itertools.pairwise(ends)], asked


def test_asking_whether_slots_are_contended_never_waits_on_a_waiter(engine):
    # A worker asks (holding its transfer's lock) while a worker of another file, inside the
    # slots' lock, reports itself waiting (which takes the transfer's lock): no deadlock.
    slots = engine(connections=1).slots
    slots.acquire(0)
    transfer_lock, reporting = threading.Lock(), threading.Event()

    def report_waiting():
        reporting.set()
        with transfer_lock:
            pass

    asking = concurrent.futures.ThreadPoolExecutor(1)
    with transfer_lock:
        waiter = threading.Thread(target=slots.acquire, args=(1, report_waiting), daemon=True)
        waiter.start()
        assert reporting.wait(10)
        assert asking.submit(slots.contended, 0).result(timeout=10) is True
        assert slots.contended(besides=1) is False, "a file's own waiting workers are not contention"
    asking.shutdown()
    slots.release()
    waiter.join(10)
    assert not waiter.is_alive()


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    """Wait for an event the test cannot be told about directly (never a timed assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def asked_ranges(cdn, path="/m.safetensors") -> list[tuple[int, int]]:
    """Each GET's Range as (first, last) bytes."""
    got = [
        r.headers["range"][6:].split("-")
        for r in cdn.seen(path)
        if r.method == "GET" and "range" in r.headers
    ]
    return [(int(a), int(b) if b else -1) for a, b in got]


def test_a_request_stalled_before_its_first_byte_is_taken_over_without_an_empty_range(
    engine, cdn, tmp_path, monkeypatch, caplog
):
    # The empty-range bug (`Range: bytes=33554432-33554431`, then a retry): a piece's request
    # that got no byte yet is judged slow, and an idle connection takes all of it over, which
    # leaves the piece empty, [32 MiB, 32 MiB). When its first bytes arrive, its worker asked
    # which bytes of the piece were missing; the gap before it (the first piece, still under
    # way) reached past the piece's end, and the piece asked for nothing: bytes=N-(N-1).
    piece = transfer.PIECE
    monkeypatch.setattr(transfer, "MIN_PIECE", piece)  # pieces of PIECE: the faults sit at their starts
    monkeypatch.setattr(transfer, "TAIL_SHARE", 1)  # every request asks for its whole piece
    monkeypatch.setattr(transfer, "JUDGED_AFTER", 0)  # judged at once: no wait for half a second
    data = blob(2 * piece + 8 * MiB, seed=21)
    cdn.add("/m.safetensors", data)
    first, stalled, taken_over, last = (threading.Event() for _ in range(4))
    cdn.fault_at("/m.safetensors", 0, Fault(stall_at=MiB, hold=first))  # under way, far from done
    cdn.fault_at("/m.safetensors", piece, Fault(stall_at=0, hold=stalled), Fault(stall_at=0, hold=taken_over))
    cdn.fault_at("/m.safetensors", 2 * piece, Fault(stall_at=0, hold=last))
    caplog.set_level(logging.INFO, logger="provision")
    eng = engine(connections=3, per_file=3, timeout=(2, 60.0))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fetched = pool.submit(eng.fetch, download(cdn, tmp_path, data=data))
        wait_for(lambda: cdn.holds == 3, "three pieces under way, each held")
        last.set()  # the last piece ends; its connection takes over the stalled one's request
        wait_for(lambda: cdn.holds == 4, "the takeover's request held")
        stalled.set()  # the stalled request's first bytes: its piece is empty now
        wait_for(lambda: cdn.dropped == 1, "the stalled request's connection closed")
        first.set()
        taken_over.set()
        assert fetched.result(timeout=60).status == "ok"
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(data)
    assert all(a <= b for a, b in asked_ranges(cdn)), asked_ranges(cdn)
    assert "retry" not in caplog.text


def named(cdn, tmp_path, name: str, data: bytes) -> Download:
    return Download(
        url=f"{cdn.url}/{name}",
        dest=tmp_path / "models" / name,
        size=len(data),
        checksum=Checksum("sha256", sha256(data)),
        identity=f"test:{name}",
    )


def test_a_host_that_ignores_range_is_named_once_and_gets_one_plain_request_per_file(
    engine, cdn, tmp_path, caplog
):
    # As olah (a Hugging Face mirror) offline: every answer is the whole file, chunked, no
    # Content-Length. b.bin has 3 MiB on disk from an earlier run, when the server did ranges.
    files = {name: blob(SIZE, seed=30 + n) for n, name in enumerate(["a.bin", "b.bin", "c.bin"])}
    for name, data in files.items():
        cdn.add(f"/{name}", data)
    cdn.fault("/b.bin", Fault(close_at=3 * MiB))
    with pytest.raises(FetchError):
        engine(retry=RetryPolicy(attempts=1), per_file=1).fetch(named(cdn, tmp_path, "b.bin", files["b.bin"]))
    assert (tmp_path / "models" / "b.bin.part.state").exists()
    for served in cdn.files.values():
        served.ignore_range = served.chunked = True
    cdn.requests.clear()
    cdn.body_bytes = 0
    caplog.set_level(logging.INFO, logger="provision")
    eng = engine()
    for name, data in files.items():
        assert eng.fetch(named(cdn, tmp_path, name, data)).status == "ok"
        assert sha256((tmp_path / "models" / name).read_bytes()) == sha256(data)
    host = cdn.url.split("//")[1]
    assert caplog.text.count(f"{host} ignores Range: one connection per file, no resume") == 1
    assert caplog.text.count("ignores Range: one") == 1
    assert f"b.bin: starting over from byte 0 ({host} ignores Range); 3 MiB on disk discarded" in caplog.text
    assert "If-Range" not in caplog.text, "not taken for a changed file"
    got = [(r.path, "range" in r.headers, "if-range" in r.headers) for r in cdn.requests]
    # Once known, no Range is sent at all: one plain request per file, no bytes wasted.
    assert got == [("/a.bin", True, False), ("/b.bin", False, False), ("/c.bin", False, False)]
    assert cdn.body_bytes == sum(map(len, files.values()))
    assert sorted(on_disk(tmp_path)) == sorted(files)


def test_a_stream_broken_off_on_a_host_without_range_starts_over_with_a_line_saying_so(
    engine, cdn, tmp_path, caplog
):
    cdn.add("/m.safetensors", DATA, ignore_range=True, chunked=True)
    cdn.fault("/m.safetensors", Fault(close_at=2 * MiB))
    caplog.set_level(logging.INFO, logger="provision")
    assert engine().fetch(download(cdn, tmp_path)).status == "ok"
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(DATA)
    host = cdn.url.split("//")[1]
    assert caplog.text.count("ignores Range: one connection per file") == 1
    assert f"m.safetensors: starting over from byte 0 ({host} ignores Range); 2 MiB on disk discarded" in (
        caplog.text
    )
    assert len(cdn.requests) == 2 and cdn.body_bytes == SIZE + 2 * MiB


def test_a_file_smaller_than_a_piece_gets_the_next_connection_a_big_file_frees(
    engine, cdn, tmp_path, monkeypatch
):
    # A big file holds every connection (two, each on a piece the server holds). A small file
    # starts and waits. The first piece to end hands its connection to the small file: its
    # request reaches the server before the big file's next piece is asked for (it used to
    # wait until the big file had no piece left: 12 s for a 1.7 MiB file in the issue).
    monkeypatch.setattr(transfer, "PIECE", MiB)  # eight pieces, and a small file below one
    big, small = blob(8 * MiB, seed=40), blob(300_000, seed=41)
    cdn.add("/big.bin", big)
    cdn.add("/small.bin", small)
    first, second = threading.Event(), threading.Event()
    cdn.fault_at("/big.bin", 0, Fault(stall_at=0, hold=first))
    cdn.fault_at("/big.bin", MiB, Fault(stall_at=0, hold=second))
    eng = engine(connections=2, per_file=2, timeout=(2, 60.0))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        fetched_big = pool.submit(eng.fetch, named(cdn, tmp_path, "big.bin", big))
        wait_for(lambda: cdn.holds == 2, "both connections on the big file")
        fetched_small = pool.submit(eng.fetch, named(cdn, tmp_path, "small.bin", small))
        wait_for(lambda: eng.slots.waiting, "the small file waiting for a connection")
        first.set()  # the big file's first piece ends
        wait_for(lambda: len(cdn.requests) > 2, "the next request")
        second.set()
        assert (fetched_big.result(60).status, fetched_small.result(60).status) == ("ok", "ok")
    order = [(r.path, r.headers.get("range")) for r in cdn.requests]
    assert order[2][0] == "/small.bin", order
    assert sha256((tmp_path / "models" / "big.bin").read_bytes()) == sha256(big)
    assert sha256((tmp_path / "models" / "small.bin").read_bytes()) == sha256(small)


def test_a_host_link_adds_connections_while_the_rate_rises_and_backs_off_when_it_stops():
    from provision.slots import HOLD, START, WINDOW, HostLink

    link, now = HostLink(ceiling=8 * START, now=0.0), 0.0

    def window(rate: float, in_use: int | None = None) -> int:
        """One window of traffic at `rate` bytes/s, every connection busy and more wanted."""
        nonlocal now
        link.in_use = link.limit if in_use is None else in_use
        link.wanted = True
        now += WINDOW
        link.received(int(rate * WINDOW), now)
        return link.limit

    per_connection = 10 * MiB  # a per-connection cap: the rate grows with every connection
    assert window(START * per_connection / 2) == START, "the first window only opens connections"
    assert window(START * per_connection) == 2 * START  # on trial
    # The window after a raise lets the new connections open: half of them count, no verdict.
    assert window(1.5 * START * per_connection) == 2 * START
    assert window(2 * START * per_connection) == 4 * START  # it paid: kept, and another raise
    assert window(3 * START * per_connection) == 4 * START  # opening
    assert window(4 * START * per_connection) == 8 * START  # the ceiling
    assert window(8 * START * per_connection) == 8 * START
    assert window(8 * START * per_connection) == 8 * START
    # The link is full now: a raise that brings no more is taken back, and held.
    link.limit, link.before, link.settling = 32, None, False
    assert window(300 * MiB) == 64
    assert window(300 * MiB) == 64, "opening: no verdict yet"
    assert window(300 * MiB) == 32, "no rise: back to the limit before"
    assert window(300 * MiB) == 32 and window(300 * MiB) == 32, "held"
    now += HOLD
    assert window(300 * MiB) == 64, "tried again after HOLD"
    # A burst of refusals while trying: back to the limit before, once.
    link.pushed_back(now)
    link.pushed_back(now + 0.1)
    assert link.limit == 32
    # Otherwise one fewer per refusal than were in use when the burst began.
    now += WINDOW
    link.in_use = 12
    for n in range(5):
        link.pushed_back(now + n * 0.1)
    assert link.limit == 7


def test_connections_follow_a_per_connection_cap_up_to_the_ceiling(engine, cdn, tmp_path, monkeypatch):
    # Each connection gets 1 MiB/s (a CDN's cap): the host starts with START connections and
    # gets more as the rate rises with them, up to the ceiling, never past it.
    from provision.slots import START

    monkeypatch.setattr(transfer, "PIECE", MiB)
    data = blob(64 * MiB, seed=50)
    cdn.add("/m.safetensors", data)
    cdn.rate = MiB // 2  # low enough that this machine's CPU is never what caps the rate
    eng = engine(connections=32, per_file=32, timeout=(2, 10.0))
    assert eng.fetch(download(cdn, tmp_path, data=data)).status == "ok"
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(data)
    assert START < cdn.peak_sends <= 32
    assert eng.slots.limit(cdn.url.split("//")[1]) > START, "raised, and kept"


def test_a_server_that_limits_connections_per_client_gets_no_more_and_no_errors(
    engine, cdn, tmp_path, monkeypatch, caplog
):
    # nginx `limit_conn 4`: a fifth request at once gets 503. The refusals bring the host's
    # limit down to 4; the refused pieces are retried within it; no error.
    from provision.slots import START

    monkeypatch.setattr(transfer, "PIECE", MiB)
    data = blob(24 * MiB, seed=51)
    cdn.add("/m.safetensors", data)
    cdn.rate, cdn.max_sends = 4 * MiB, 4
    caplog.set_level(logging.INFO, logger="provision")
    eng = engine(connections=32, per_file=32, timeout=(2, 10.0))
    assert eng.fetch(download(cdn, tmp_path, data=data)).status == "ok"
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(data)
    assert 0 < cdn.refused <= START, "one burst of refusals, then within the limit"
    assert eng.slots.limit(cdn.url.split("//")[1]) <= 4


def test_a_stream_without_a_size_stopped_midway_is_never_taken_for_the_whole_file(engine, cdn, tmp_path):
    """A body without Content-Length ends when the server closes it; a stop (Ctrl-C, SIGTERM)
    also ends the read loop. Counting the bytes read until the stop as the file's size made the
    stopped download look complete: it was committed, or its state said total = what was read
    and the next run "resumed" it to a truncated file marked ok (no checksum to catch it)."""
    cdn.add("/m.safetensors", DATA, length=False)
    cdn.rate = 2 * MiB
    running = engine()
    part = tmp_path / "models" / "m.safetensors.part"
    outcome: list = []

    def fetch():
        try:
            outcome.append(running.fetch(download(cdn, tmp_path, checksum=False, size=False)))
        except FetchError as err:
            outcome.append(err)

    worker = threading.Thread(target=fetch)
    worker.start()
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size > MiB) and time.monotonic() < deadline:
        time.sleep(0.02)
    running.cancel()
    worker.join(60)

    assert isinstance(outcome[0], FetchError), outcome
    assert not (tmp_path / "models" / "m.safetensors").exists(), "a stopped stream was committed"
    state = json.loads((tmp_path / "models" / "m.safetensors.part.state").read_text())
    assert state["total"] is None, "the bytes read before the stop were saved as the file's size"


def test_at_equal_speeds_a_files_last_request_is_split_with_a_connection_that_frees_up(
    engine, cdn, tmp_path, monkeypatch
):
    # A per-connection cap: every connection as fast as the next. Two pieces end together; one
    # connection takes the third piece, asked for whole (as while other files wait); the other
    # used to end there, and the third piece ran alone for a piece's time (3.2 s at 32 MiB and
    # 10 MiB/s). Now it takes the back half of that request, which ends where it begins.
    piece = transfer.PIECE
    monkeypatch.setattr(transfer, "MIN_PIECE", piece)  # pieces of PIECE
    monkeypatch.setattr(transfer, "TAIL_SHARE", 1)  # every request asks for its whole piece
    data = blob(3 * piece, seed=60)
    cdn.add("/m.safetensors", data)
    cdn.rate = 32 * MiB
    result = engine(connections=2, per_file=2).fetch(download(cdn, tmp_path, data=data))
    assert (result.status, result.bytes) == ("ok", len(data)), "every byte written once"
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(data)
    starts = range_starts(r for r in cdn.seen("/m.safetensors") if r.method == "GET")
    assert any(2 * piece < start < 3 * piece for start in starts), f"the last piece ran alone: {starts}"
    assert cdn.body_bytes < len(data) + 4 * MiB, "only what was on its way is sent twice"


def test_a_file_of_fewer_pieces_than_connections_is_cut_finer(engine, cdn, tmp_path):
    # 80 MiB was three 32 MiB pieces: three connections at most, however many were free (a
    # 150 MiB LoRA took 3.4 s on five at the end of a capped run). Now it is cut into up to
    # min(SPLIT, per_file) pieces of at least MIN_PIECE, fetched side by side.
    cdn.add("/m.safetensors", LARGE)
    cdn.rate = 16 * MiB  # every piece takes a while: they overlap
    result = engine(connections=16, per_file=16).fetch(download(cdn, tmp_path, data=LARGE))
    assert (result.status, result.bytes) == ("ok", len(LARGE))
    assert sha256((tmp_path / "models" / "m.safetensors").read_bytes()) == sha256(LARGE)
    assert cdn.peak_sends > 3, cdn.peak_sends
    assert len(LARGE) // transfer.MIN_PIECE <= len(cdn.requests) <= 2 * len(LARGE) // transfer.MIN_PIECE


def test_small_files_do_not_wait_for_the_big_files_turns(cdn, tmp_path):
    # `--jobs 1`: one big file at a time. Files smaller than a piece run in a lane of their own
    # beside it: all of them are in place while the big file's body is still held back (they
    # used to wait until it ended, then went one at a time).
    from provision import Provisioner

    held = threading.Event()
    big = blob(40 * MiB, seed=61)
    cdn.add("/big.bin", big)
    cdn.fault_at("/big.bin", 0, Fault(stall_at=MiB, hold=held))
    smalls = {f"s{n}.bin": blob(300_000, seed=62 + n) for n in range(6)}
    for name, data in smalls.items():
        cdn.add(f"/{name}", data)
    config = tmp_path / "models.toml"
    items = {"big": "big.bin", **{name.split(".")[0]: name for name in smalls}}
    config.write_text("[models.esrgan]\n" + "".join(f'{k} = "{cdn.url}/{v}"\n' for k, v in items.items()))
    folder = tmp_path / "ws" / "sdnext" / "models" / "ESRGAN"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        run = pool.submit(Provisioner(tmp_path / "ws", jobs=1, progress=False).run, config)
        try:
            wait_for(lambda: all((folder / name).exists() for name in smalls), "the small files in place")
            assert not (folder / "big.bin").exists() and cdn.holds == 1, "the big file still held"
        finally:
            held.set()
        assert [r.status for r in run.result(60).results] == ["ok"] * 7
    for name, data in {"big.bin": big, **smalls}.items():
        assert sha256((folder / name).read_bytes()) == sha256(data)


def test_read_buffers_are_large_on_few_connections_and_stay_within_their_budget_as_they_grow():
    # A fast link stays at 16 connections: a megabyte a read (less CPU per byte). A link that
    # rewards more gets them with smaller reads; the buffers of the connections together stay
    # within BUFFERS, also while the old ones are still in use (peak RSS under 64 MiB).
    from provision import engine as engine_module

    running = Engine(VerifiedRecords(None), connections=64)
    sizes: dict[int, int] = {}
    lock = threading.Lock()

    def holders(count: int, next_body: threading.Event | None = None):
        """`count` threads that take a connection and a buffer each, then hold both."""
        taken, release = threading.Barrier(count + 1), threading.Event()

        def hold() -> None:
            running.slots.acquire(0, host="cdn")
            with lock:
                sizes[threading.get_ident()] = len(running.buffer())
            taken.wait()
            if next_body is not None:  # the next body read on the same connection
                next_body.wait()
                with lock:
                    sizes[threading.get_ident()] = len(running.buffer())
                taken.wait()
            release.wait()

        threads = [threading.Thread(target=hold) for _ in range(count)]
        for thread in threads:
            thread.start()
        taken.wait(30)
        return threads, taken, release

    def buffered() -> int:
        with lock:
            return sum(sizes.values())

    first_body = threading.Event()
    first, first_taken, first_release = holders(16, first_body)
    assert sorted(set(sizes.values())) == [engine_module.READ_SIZE]  # 16 connections: a megabyte
    running.slots.hosts["cdn"].limit = 32  # the link rewarded more
    second, _, second_release = holders(16)
    assert buffered() <= engine_module.BUFFERS + 16 * engine_module.MIN_READ_SIZE
    first_body.set()  # the first 16 go on to their next bodies: smaller reads now
    first_taken.wait(30)
    assert max(sizes.values()) <= engine_module.READ_SIZE // 2
    assert buffered() <= engine_module.BUFFERS
    for release in (first_release, second_release):
        release.set()
    for thread in first + second:
        thread.join(30)


def test_the_runs_order_not_the_thread_that_starts_first_decides_the_turn_for_connections(tmp_path):
    # run.py starts the biggest files first, five threads at once: whichever thread reached its
    # first request first used to go first (the 1 GiB file before the 2 GiB one, which then came
    # in last with most of it still to hash). Files smaller than a piece still go before both.
    running = Engine(VerifiedRecords(None))
    piece = transfer.PIECE

    def file(name: str, size: int) -> Download:
        return Download(f"http://127.0.0.1:9/{name}", tmp_path / name, size=size, identity=name)

    biggest, bigger, small = (
        file("biggest", 64 * piece),
        file("bigger", 32 * piece),
        file("small", piece // 2),
    )
    running.take_turns([biggest, bigger, small])
    turns = {"bigger": running.priority(bigger), "small": running.priority(small)}
    turns["biggest"] = running.priority(biggest)  # its thread got there last
    assert sorted(turns, key=turns.get) == ["small", "biggest", "bigger"]
