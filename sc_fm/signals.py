"""The one SIGTERM handler and the exit codes of a stopped command.

SIGTERM (a scheduler's time limit, ``kill``) unwinds like Ctrl-C, so every clean-up that
SIGINT runs runs (staging folders removed, locks released, MLflow runs marked KILLED); the
command then exits 143 (128 + SIGTERM) rather than Ctrl-C's 130. A reader that closes the
pipe early (``scfm verify | head``) ends the command quietly with 141 (128 + SIGPIPE).

Writes that must not stop half-way (an MLflow call inside a SQLite transaction) run inside
``deferred_interrupts``: a signal that arrives then is raised when the write is done.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_BROKEN_PIPE = 141


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: a ``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` clean-up runs."""


def _terminated(signum: int, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM lets the clean-up finish
    raise Terminated()


def install_sigterm_handler() -> None:
    """SIGTERM raises ``Terminated`` in the main thread (elsewhere signals cannot be set)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then raise the first that came.

    Why: an exception raised inside an MLflow write leaves its SQLite transaction open, so the
    clean-up's own write (the run marked KILLED) waits on that lock and fails or hangs. A second
    Ctrl-C inside the block raises at once, for a write that never returns (a dead server).
    No-op outside the main thread, where signals are never delivered.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame) -> None:
        if signum == signal.SIGINT and signal.SIGINT in held:
            raise KeyboardInterrupt()
        held.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(signum) is not signal.SIG_IGN}  # an ignored signal stays ignored
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if held:
            signal.raise_signal(held[0])


def silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)
