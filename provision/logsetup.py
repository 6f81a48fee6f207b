"""Logging: a short console, a full timestamped log file, and secrets masked in both."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import textwrap
from pathlib import Path

from . import screen
from .secrets import RedactingFilter

LOGGER_NAME = "provision"


class _ConsoleHandler(logging.StreamHandler):
    """Console lines go above the live progress lines (screen.Block) while they are shown: the
    block is cleared, the whole line printed and the block drawn again, so no line is torn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if self.stream.isatty():  # a long line wraps at the terminal's width, indented
                width = max(40, shutil.get_terminal_size().columns - 1)
                text = "\n".join(
                    textwrap.fill(line, width, subsequent_indent="  ", break_on_hyphens=False)
                    for line in text.splitlines()
                )
            block = screen.active()
            if block is not None and block.stream is self.stream:
                block.write_above(text)
            else:
                self.stream.write(text + "\n")
                self.flush()
        except Exception:  # as logging.StreamHandler does: never let logging raise
            self.handleError(record)


class _LogFileHandler(logging.FileHandler):
    """The log file, until a write fails (a full disk): then one warning on the console and no
    more attempts, instead of logging's traceback for every line that follows."""

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
            return
        self.broken = True
        with contextlib.suppress(OSError):
            self.close()
        logging.getLogger(LOGGER_NAME).warning(
            f"cannot write the log file {self.baseFilename}: {error.strerror}; logging to the console only"
        )


def setup_logging(log_file: Path | None, *, verbosity: int = 0) -> str | None:
    """Configure the `provision` logger; returns a warning when the log file can't be opened.

    verbosity: -1 quiet (errors only), 0 normal, 1 verbose (debug on the console).
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    redacting = RedactingFilter()

    console = _ConsoleHandler(sys.stderr)
    console.setLevel({-1: logging.ERROR, 0: logging.INFO, 1: logging.DEBUG}[verbosity])
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(redacting)
    logger.addHandler(console)

    if log_file is None:
        return None
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = _LogFileHandler(log_file, mode="a", encoding="utf-8")
    except OSError as err:
        return f"cannot write the log file {log_file}: {err.strerror}; logging to the console only"
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    handler.addFilter(redacting)
    logger.addHandler(handler)
    return None
