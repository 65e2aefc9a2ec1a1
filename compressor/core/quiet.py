"""Other libraries' output goes to the run's log file (compressor.log), counted, not to the terminal.

It arrives three ways: Python `warnings` (sent to logging), other libraries' `logging` records
(the root logger's console handlers pass only the project's own records while a run runs), and
anything written straight to file descriptors 1 and 2: C/C++ libraries (cpuinfo, TensorFlow/LiteRT,
ONNX Runtime) and Python code holding sys.stdout/sys.stderr (tqdm bars, libraries' own log
handlers). `Captured` takes those descriptors for a block and forwards each line to the log file.
The run's own terminal output (progress, table, log lines) writes to `terminal()`, a copy of the
descriptor made before any capture, so it still reaches the terminal."""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile
from typing import IO, Iterator

verbose = False  # `compressor -v`: library output on the terminal too (it still goes to the log file)
OURS = ("compressor", "hydra")  # loggers whose records the terminal shows at default verbosity
_count = 0  # library messages since the run began (records and captured lines)
_depth = 0  # captures in progress (they nest: an inner one hands 1 and 2 back to the outer)
_terminals: dict[int, IO[str]] = {}


def _library(record: logging.LogRecord) -> bool:
    return record.name.split(".")[0] not in OURS


def _shown(record: logging.LogRecord) -> bool:
    """The console handlers' filter during a run."""
    return verbose or not _library(record)


class _Counter(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        global _count
        _count += _library(record)


def messages() -> int:
    """How many library messages went to the log file since `run_output` began."""
    return _count


def terminal(stream: IO[str]) -> IO[str]:
    """`stream`, or, when it writes to file descriptor 1 or 2, a stream on a copy of that
    descriptor (made once, outside any capture): what is written there still reaches the terminal
    while `Captured` redirects 1 and 2. Any other stream (pytest's capture) is returned as is."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream
    if fd not in (1, 2) or (_depth and fd not in _terminals):
        return stream
    if fd not in _terminals:
        stream.flush()
        _terminals[fd] = os.fdopen(os.dup(fd), "w", buffering=1, errors="replace",
                                   encoding=getattr(stream, "encoding", None) or "utf-8")
    return _terminals[fd]


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    with contextlib.suppress(OSError, AttributeError, TypeError):  # C stdio buffers a redirected stdout fully
        ctypes.CDLL(None).fflush(None)


def _log_handlers() -> list[logging.Handler]:
    """Where library lines go: the log files (the file handlers of the root and `compressor`
    loggers) and, with `verbose`, the root's console."""
    return list(dict.fromkeys(h for logger in (logging.getLogger(), logging.getLogger("compressor"))
                              for h in logger.handlers
                              if isinstance(h, logging.FileHandler) or (verbose and type(h) is logging.StreamHandler)))


def _forward(name: str, lines: list[str], handlers: list[logging.Handler]) -> None:
    """Lines a library wrote, as INFO records of logger `name`, to `handlers`, and counted. Not
    through the logger itself: a library's own handler may write to 1 or 2, being captured."""
    global _count
    lines = [line.rstrip() for line in lines if line.strip()]
    for line in lines:
        record = logging.LogRecord(name, logging.INFO, name, 0, line, None, None)
        for h in handlers:
            if record.levelno >= h.level:
                h.handle(record)
    _count += len(lines)


class Captured:
    """File descriptors 1 and 2 go to a temporary file while the block runs; each line written
    there is forwarded to the log file as an INFO record of logger `name` (the library), and
    counted. `drain()` forwards what has come so far, keeping the log file in order."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> Captured:
        global _depth
        _flush()
        fd, path = tempfile.mkstemp(prefix="compressor-output-")
        self.reader = open(path, "rb")  # an offset of its own: reading does not move where 1 and 2 write
        os.unlink(path)  # removed once closed, even if the process dies
        self.saved = os.dup(1), os.dup(2)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self.pending = b""
        _depth += 1
        return self

    def drain(self, final: bool = False) -> None:
        handlers = _log_handlers()
        if not handlers and not final:  # no log file (yet): kept for the end
            return
        _flush()
        data = self.pending + self.reader.read()
        if not handlers:  # no log file at all (`compressor bench`): where it was going, now 1 and 2 are back
            with open(2, "wb", closefd=False) as stderr:
                stderr.write(data)
            return
        lines = data.split(b"\n")
        self.pending = b"" if final else lines.pop()  # a line still being written waits
        _forward(self.name, [line.split(b"\r")[-1].decode(errors="replace") for line in lines], handlers)  # tqdm: last frame

    def __exit__(self, *exc) -> None:
        global _depth
        _flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.saved[0])
        os.close(self.saved[1])
        _depth -= 1
        self.drain(final=True)
        self.reader.close()


@contextlib.contextmanager
def run_output(console: IO[str] | None = None) -> Iterator[Captured]:
    """For a whole run: library output goes to the log file and is counted (`messages()`): Python
    warnings, logging records reaching the root logger (whose console handlers then show only ours,
    written to `console`, or to `terminal()`), and what is written to descriptors 1 and 2."""
    global _count
    _count = 0
    root = logging.getLogger()
    consoles = [(h, h.stream) for h in root.handlers if type(h) is logging.StreamHandler]  # not FileHandlers
    for h, stream in consoles:
        h.setStream(console or terminal(stream))
        h.addFilter(_shown)
    counter = _Counter()
    root.addHandler(counter)
    warnings_logged = getattr(logging, "_warnings_showwarning", None) is not None
    logging.captureWarnings(True)
    try:
        with Captured("library") as captured:
            yield captured
    finally:
        logging.captureWarnings(warnings_logged)
        root.removeHandler(counter)
        for h, stream in consoles:
            h.removeFilter(_shown)
            h.setStream(stream)
