"""The store-level writer lock: one writer at a time per store path.

The lock is a file beside the store, ``STORE.lock``, made with an exclusive create (beside a
remote store, an object made with a conditional put, ``If-None-Match: *``, through
``location.RemoteFile``): whoever creates it holds it. It records
the holder's host, process id, time and a random token. A second writer polls until the lock
is gone or ``timeout`` seconds have passed, then is refused naming the holder.

A lock whose holder is on this host and no longer running (a killed ``scfm prepare``) is stale
and broken with a message. Breaking goes through a second exclusive file, ``STORE.lock.break``,
so two writers finding the same stale lock cannot both break it, nor break a fresh lock taken
in between. A lock held from another host is never broken automatically: the message says how.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from sc_fm.errors import InputDataError
from sc_fm.store.location import RemoteFile, is_url, number_from_env

DEFAULT_TIMEOUT_S = 60.0
TIMEOUT_ENV = "SCFM_LOCK_TIMEOUT"
_EMPTY_GRACE_S = 10.0  # a lock file with no content yet: its writer is between create and write


def lock_path(store: str | Path) -> Path | RemoteFile:
    if is_url(store):
        return RemoteFile(str(store).rstrip("/") + ".lock")
    store = Path(store)
    return store.with_name(store.name + ".lock")


def default_timeout() -> float:
    return number_from_env(TIMEOUT_ENV, DEFAULT_TIMEOUT_S, float, "the seconds a writer waits for another", "60")


class StoreLock:
    """``with StoreLock(store, timeout):`` holds the writer lock of ``store``."""

    def __init__(self, store: str | Path, timeout: float | None = None, poll_s: float = 0.05):
        self.store = store if is_url(store) else Path(store)
        self.path = lock_path(store)
        self.timeout = default_timeout() if timeout is None else float(timeout)
        self.poll_s = poll_s
        self.token = uuid.uuid4().hex
        self.held = False

    def acquire(self) -> StoreLock:
        deadline = time.monotonic() + self.timeout
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
                             "token": self.token}).encode()
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            if _create_exclusive(self.path, record):
                self.held = True
                return self
            holder = _read(self.path)
            if holder is not None and _stale(self.path, holder):
                self._break(holder)
                continue
            if time.monotonic() >= deadline:
                raise InputDataError(
                    f"another writer holds the store's lock ({_describe(holder)}); waited "
                    f"{self.timeout:g} s", str(self.store),
                    f"let that writer finish and run again, wait longer (--lock-timeout SECONDS or "
                    f"{TIMEOUT_ENV}), or, if no such process is running any more, delete {self.path}")
            time.sleep(self.poll_s)

    def release(self) -> None:
        """Remove the lock if it is still this holder's (it always is, unless broken by hand)."""
        if not self.held:
            return
        self.held = False
        holder = _read(self.path)
        if holder and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def _break(self, stale: dict) -> None:
        guard = self.path.with_name(self.path.name + ".break")
        if not _create_exclusive(guard, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                    "time": time.time()}).encode()):
            other = _read(guard)
            if other is not None and _stale(guard, other):  # a breaker killed mid-break
                guard.unlink(missing_ok=True)
            time.sleep(self.poll_s)
            return
        try:
            if _read(self.path) == stale:  # still the stale lock, not a fresh one taken meanwhile
                self.path.unlink(missing_ok=True)
                print(f"scfm: broke a stale writer lock on {self.store} ({_describe(stale)}: that process "
                      "is no longer running)", file=sys.stderr)
        finally:
            guard.unlink(missing_ok=True)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _create_exclusive(path: Path | RemoteFile, content: bytes) -> bool:
    if isinstance(path, RemoteFile):
        return path.create_exclusive(content)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _read(path: Path) -> dict | None:
    """The lock's record; ``{}`` while it is still being written; None when there is no lock."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text) if text else {}
    except json.JSONDecodeError:
        record = {"unreadable": text[:80]}
    return record if isinstance(record, dict) else {"unreadable": text[:80]}


def _stale(path: Path, holder: dict) -> bool:
    """Whether the holder is known to be gone: a process of this host that is not running, or
    an empty/unreadable lock file older than a grace period."""
    if "pid" not in holder or "host" not in holder:
        try:
            return time.time() - path.stat().st_mtime > _EMPTY_GRACE_S
        except FileNotFoundError:
            return False
    if holder["host"] != socket.gethostname() or not isinstance(holder["pid"], int):
        return False
    return not _running(holder["pid"])


def _running(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(holder: dict | None) -> str:
    if not holder or "pid" not in holder:
        return "holder not recorded yet"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("time", 0))))
    return f"process {holder['pid']} on host {holder.get('host')}, since {since}"
