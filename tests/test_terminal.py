"""provision at a real terminal: a pseudo-terminal of 80x24 columns rendered by a terminal
emulator (pyte), as a person sees it in tmux or the web terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from .conftest import SECRET_VARS, blob

pyte = pytest.importorskip("pyte", reason="pyte comes with the test extras")

COLUMNS = 80


def run_in_terminal(argv: list[str], env: dict[str, str], rows: int = 24) -> tuple[int, list[str]]:
    """Run argv with a pty as its terminal; the screen as rendered at the end (rows scrolled
    off the top are kept, as a terminal's scrollback would)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, COLUMNS, 0, 0))
    process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    screen = pyte.HistoryScreen(COLUMNS, rows, history=2000)
    stream = pyte.ByteStream(screen)
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not data:
            break
        stream.feed(data)
    os.close(master)
    code = process.wait(timeout=60)
    history = ["".join(char.data for char in line.values()) for line in screen.history.top]
    return code, [*history, *screen.display]


def test_a_run_at_a_terminal_prints_whole_lines_and_leaves_no_bar(cdn, write_config, workspace):
    long_name = "a-lora-with-a-name-long-enough-to-make-every-line-about-it-wrap-at-80.safetensors"
    cdn.add(f"/{long_name}", b"x" * 1000)
    for name, size in (("a", 3 * 1024 * 1024), ("b", 3 * 1024 * 1024), ("tiny", 10_000)):
        cdn.add(f"/{name}.safetensors", blob(size, seed=len(name)))
    cdn.rate = 512 * 1024  # per connection: the bars are on screen while items start and end
    lines = "".join(f'{n} = "{cdn.url}/{n}.safetensors"\n' for n in ("a", "b", "tiny"))
    lines += f'long = "{cdn.url}/{long_name}"\n'  # its start and done lines are longer than 80
    config = write_config(f"[models.lora]\n{lines}")
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    env.update({"TERM": "xterm-256color", "PROVISION_RETRY_BASE": "0.01", "COLUMNS": str(COLUMNS)})
    argv = [sys.executable, "-m", "provision", str(config), "--workspace", str(workspace)]
    argv += ["--connections", "2"]
    code, screen = run_in_terminal(argv, env)
    text = "\n".join(screen)
    assert code == 0, text
    rows = [row.rstrip() for row in screen if row.strip()]
    for name in ("a", "b", "tiny"):
        assert f"start models.lora.{name} -> Lora/{name}.safetensors" in rows, text
        assert any(row.startswith(f"done models.lora.{name}: ") for row in rows), text
    for row in rows:  # a log line never shares its row with a bar or another line's piece
        for word in ("start models.", "done models.", "items: "):
            assert word not in row or row.startswith(word) or row.startswith("4 items"), row
    assert not any("%|" in row for row in rows), text  # every bar is gone at the end
    assert all(len(row) < COLUMNS for row in rows), text  # no line wraps
    assert rows[-1] == "4 items: 4 ok; total 6.0 MiB", text
    assert any(row.startswith("start models.lora.long -> Lora/a-lora-with") for row in rows), text
