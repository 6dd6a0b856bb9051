"""A size-bounded local cache of remote shard chunks, so a second epoch does not download again.

Set ``SCFM_CHUNK_CACHE=DIR`` (one folder per machine; every rank and loader worker shares it)
and optionally ``SCFM_CHUNK_CACHE_GB`` (default 20). Each entry is one compressed chunk exactly
as stored (its crc32c included, verified on every use: a damaged entry is dropped and fetched
again), named by the hash of its URL. Shard chunks never change once written (an append adds
new shards under new names), so an entry never goes stale. When the folder grows past its
bound the least recently used entries are removed down to 90 % of it.

fsspec's own ``filecache::`` keeps whole files without a size bound, so this small cache is
written here instead.

In front of it, each process keeps its most recently used small remote frames in memory
(``recent_frames``: frames up to 256 kB, 64 MB in all). A shard's ``indptr`` chunk spans 8,192
cells and an ``obs`` chunk 65,536, both compressing to a few kB, so the loader blocks (512 cells)
of a shard share them; without this each block costs one request (or cache file) per such
array. The ``indices``/``data`` chunks (~1,024 cells, MBs) are a block's own, read once per
epoch: kept in memory they would only push the shared ones out.
"""

from __future__ import annotations

import functools
import hashlib
import os
import uuid
from collections import OrderedDict
from pathlib import Path

from sc_fm.errors import InputDataError

CACHE_ENV = "SCFM_CHUNK_CACHE"
CACHE_GB_ENV = "SCFM_CHUNK_CACHE_GB"
DEFAULT_GB = 20.0


class ChunkCache:
    """``get(url)`` / ``put(url, frame)`` over a folder holding at most ``max_bytes``."""

    def __init__(self, folder: str | Path, max_bytes: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._size: int | None = None  # this process's estimate; rescanned before evicting

    def _entry(self, url: str) -> Path:
        digest = hashlib.blake2b(url.encode(), digest_size=16).hexdigest()
        return self.folder / digest[:2] / digest

    def get(self, url: str) -> bytes | None:
        path = self._entry(url)
        try:
            frame = path.read_bytes()
        except FileNotFoundError:
            return None
        os.utime(path)  # least recently used goes first
        return frame

    def drop(self, url: str) -> None:
        self._entry(url).unlink(missing_ok=True)

    def put(self, url: str, frame: bytes) -> None:
        if len(frame) > self.max_bytes:
            return
        path = self._entry(url)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(frame)
        os.replace(tmp, path)  # a reader sees the whole entry or none
        if self._size is None:
            self._size = self.used_bytes()
        else:
            self._size += len(frame)
        if self._size > self.max_bytes:
            self._evict()

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._files())

    def _files(self) -> list[Path]:
        return [p for p in self.folder.glob("??/*") if ".tmp-" not in p.name]

    def _evict(self) -> None:
        entries = []
        for path in self._files():
            try:
                stat = path.stat()
            except FileNotFoundError:  # another process evicted it
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        goal = int(self.max_bytes * 0.9)
        for _, size, path in entries:
            if total <= goal:
                break
            path.unlink(missing_ok=True)
            total -= size
        self._size = total


class RecentFrames:
    """A least-recently-used map ``url -> frame`` of frames up to ``max_frame`` bytes, holding at
    most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int, max_frame: int):
        self.max_bytes, self.max_frame = int(max_bytes), int(max_frame)
        self._frames: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0

    def get(self, url: str) -> bytes | None:
        frame = self._frames.get(url)
        if frame is not None:
            self._frames.move_to_end(url)
        return frame

    def put(self, url: str, frame: bytes) -> None:
        if len(frame) > min(self.max_frame, self.max_bytes):
            return
        self.drop(url)
        self._frames[url] = frame
        self._size += len(frame)
        while self._size > self.max_bytes:
            _, oldest = self._frames.popitem(last=False)
            self._size -= len(oldest)

    def drop(self, url: str) -> None:
        frame = self._frames.pop(url, None)
        if frame is not None:
            self._size -= len(frame)


@functools.cache
def _recent_for(pid: int) -> RecentFrames:
    return RecentFrames(64 * 2**20, 256 * 2**10)


def recent_frames() -> RecentFrames:
    """This process's in-memory frames (a forked loader worker starts its own, empty)."""
    return _recent_for(os.getpid())


@functools.cache
def _cache_for(folder: str, max_bytes: int) -> ChunkCache:
    return ChunkCache(folder, max_bytes)


def chunk_cache() -> ChunkCache | None:
    """The cache ``SCFM_CHUNK_CACHE`` names, or None when it is unset."""
    folder = os.environ.get(CACHE_ENV)
    if not folder:
        return None
    raw = os.environ.get(CACHE_GB_ENV, str(DEFAULT_GB))
    try:
        gb = float(raw)
    except ValueError:
        raise InputDataError(f"{CACHE_GB_ENV}={raw!r} is not a number of gigabytes", "environment",
                             f"set {CACHE_GB_ENV} to the cache's size bound, e.g. 20") from None
    return _cache_for(folder, int(gb * 1e9))
