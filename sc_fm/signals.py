"""The one SIGTERM handler and the exit codes of a stopped command.

SIGTERM (a scheduler's time limit, ``kill``) unwinds like Ctrl-C, so every clean-up that
SIGINT runs runs (staging folders removed, locks released, MLflow runs marked KILLED); the
command then exits 143 (128 + SIGTERM) rather than Ctrl-C's 130. A reader that closes the
pipe early (``scfm verify | head``) ends the command quietly with 141 (128 + SIGPIPE).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

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


def silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)
