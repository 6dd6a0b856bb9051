"""Writing shards: one CSR shard block by block (``ShardAppender``), a source's run of
consecutive shards (``ShardSequence``), or a whole shard at once (``write_shard``).

Each writes only under ``ROOT/shards/NAME``, so ingestion worker processes each write the shards
of their own task (named by its prefix) into the staging store side by side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from sc_fm.errors import InputDataError
from sc_fm.store.layout import array_config, codec_for

def _write_array(group: zarr.Group, name: str, values: np.ndarray, chunk: int, codec, config: dict) -> None:
    chunk = max(1, min(chunk, len(values))) if len(values) else 1
    arr = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=(chunk,),
                             compressors=codec, config=config)
    if len(values):
        arr[:] = values


INT32_MAX = int(np.iinfo(np.int32).max)


def _as_integer_counts(data: np.ndarray, where: str) -> np.ndarray | None:
    """``data`` as int32 when every value is a whole number, else None (stored as float32).

    Whole numbers outside int32's range are refused, never wrapped (an int64 3,000,000,000
    would become -1,294,967,296) nor rounded to float32. One cast and one comparison: cheaper
    than testing ``value % 1`` and then casting anyway; the range is checked only for integer
    types wider than int32 and when that comparison fails.
    """
    if data.dtype.kind in "iu":
        if data.dtype.itemsize >= 4 and data.dtype != np.int32 and len(data):
            _check_int32_range(data, where)
        return data.astype(np.int32, copy=False)
    with np.errstate(invalid="ignore"):
        whole = data.astype(np.int32)
    if np.array_equal(whole, data):
        return whole
    if len(data) and (data.max() > INT32_MAX or data.min() < -INT32_MAX - 1):
        finite = data[np.isfinite(data)]
        if np.array_equal(np.floor(finite), finite):  # whole numbers, some out of range
            _check_int32_range(finite, where)
    return None


def _check_int32_range(data: np.ndarray, where: str) -> None:
    low, high = data.min(), data.max()
    if high > INT32_MAX or low < -INT32_MAX - 1:
        value = high if high > INT32_MAX else low
        raise InputDataError(f"count {int(value):,} is outside the stored int32 range "
                             f"(at most {INT32_MAX:,}); it would be wrapped", where,
                             "raw UMI/read counts per gene and cell never come near this: check the "
                             "source holds counts (the right layer), or scale the values down")


class _ChunkAlignedArray:
    """A growing 1-D Zarr array written only in whole chunks (no read-modify-write of a
    partial chunk); the tail waits in memory until the next append or ``close``.

    Whole chunks are written straight from the appended array: only the chunk that joins the
    old tail to the new values is assembled in memory.
    """

    def __init__(self, group: zarr.Group, name: str, dtype, chunk: int, codec, config: dict):
        self.group, self.name, self.chunk, self.codec = group, name, max(1, chunk), codec
        self.config = config
        self.array = group.create_array(name, shape=(0,), dtype=dtype, chunks=(self.chunk,),
                                        compressors=codec, config=config)
        self.tail = np.zeros(0, dtype=dtype)

    def append(self, values: np.ndarray) -> None:
        values = values.astype(self.array.dtype, copy=False)
        n_whole = (len(self.tail) + len(values)) // self.chunk * self.chunk
        if n_whole == 0:
            self.tail = np.concatenate([self.tail, values])
            return
        start = self.array.shape[0]
        self.array.resize((start + n_whole,))
        joined = self.chunk - len(self.tail) if len(self.tail) else 0  # values completing the tail
        if joined:
            self.array[start: start + self.chunk] = np.concatenate([self.tail, values[:joined]])
            start += self.chunk
        used = n_whole - len(self.tail)
        if used > joined:
            self.array[start: start + used - joined] = values[joined:used]
        self.tail = values[used:].copy()

    def widen(self, dtype) -> None:
        """Rewrite what is written so far with a wider dtype (integer counts meeting a float)."""
        written = self.array[:]
        del self.group[self.name]
        self.array = self.group.create_array(self.name, shape=written.shape, dtype=dtype,
                                             chunks=(self.chunk,), compressors=self.codec,
                                             config=self.config)
        if len(written):
            self.array[:] = written
        self.tail = self.tail.astype(dtype)

    def close(self) -> None:
        """Write the last, partial chunk."""
        if len(self.tail):
            start = self.array.shape[0]
            self.array.resize((start + len(self.tail),))
            self.array[start:] = self.tail
            self.tail = self.tail[:0]


class ShardAppender:
    """Writes one CSR shard block by block, so memory is bounded by a block, not the shard.

    ``indices``/``data`` chunks hold about ``chunk_cells`` cells (sized from the first block's
    nonzeros per cell); ``data`` is int32 while every value is integral, else float32.
    Per-cell metadata (small) is kept until ``close`` and stored as codes + categories.
    ``checksum``: format 2 (a crc32c per chunk, every chunk written); False writes format 1.
    """

    def __init__(self, root: Path, name: str, *, codec: str = "blosc-lz4-bitshuffle",
                 chunk_cells: int = 1024, checksum: bool = True):
        self.where = Path(root) / "shards" / name
        self.group = zarr.open_group(self.where, mode="w")
        self.codec = codec_for(codec, checksum)
        self.config = array_config(checksum)
        self.chunk_cells = chunk_cells
        self.n_cells = 0
        self.nnz = 0
        self._indptr = _ChunkAlignedArray(self.group, "indptr", np.int64, chunk_cells * 8, self.codec,
                                         self.config)
        self._indptr.append(np.zeros(1, np.int64))
        self._indices: _ChunkAlignedArray | None = None
        self._data: _ChunkAlignedArray | None = None
        self._obs: dict[str, list[np.ndarray]] = {}
        self._obs_num: dict[str, list[np.ndarray]] = {}

    def append(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
               obs: dict[str, np.ndarray], obs_num: dict[str, np.ndarray]) -> None:
        """Add rows given as CSR (``indices`` sorted per row, vocabulary positions)."""
        n = len(indptr) - 1
        if np.any(indices < 0):
            raise ValueError("shard indices must be vocabulary positions (>= 0)")
        whole = _as_integer_counts(data, str(self.where))
        if self._data is None:
            chunk = self.chunk_cells * max(int(indptr[-1]) // max(n, 1), 1)
            dtype = np.int32 if whole is not None else np.float32
            self._indices = _ChunkAlignedArray(self.group, "indices", np.int32, chunk, self.codec, self.config)
            self._data = _ChunkAlignedArray(self.group, "data", dtype, chunk, self.codec, self.config)
        elif self._data.array.dtype == np.int32 and whole is None:
            self._data.widen(np.float32)
        self._indptr.append(self.nnz + indptr[1:].astype(np.int64))
        self._indices.append(indices)
        self._data.append(data if whole is None else whole)
        for col, values in obs.items():
            self._obs.setdefault(col, []).append(np.asarray(values, dtype=object))
        for col, values in obs_num.items():
            self._obs_num.setdefault(col, []).append(np.asarray(values, dtype=np.float32))
        self.n_cells += n
        self.nnz += int(indptr[-1])

    @property
    def integral(self) -> bool:
        """Whether every value so far is a whole number (stored as int32)."""
        return self._data is None or self._data.array.dtype == np.int32

    def close(self) -> tuple[int, int]:
        """Flush the tails and write metadata; returns ``(n_cells, nnz)``."""
        if self._data is None:
            self._indices = _ChunkAlignedArray(self.group, "indices", np.int32, 1, self.codec, self.config)
            self._data = _ChunkAlignedArray(self.group, "data", np.int32, 1, self.codec, self.config)
        for array in (self._indptr, self._indices, self._data):
            array.close()
        self.group.attrs.update({"n_cells": self.n_cells, "nnz": self.nnz})
        obs_group = self.group.create_group("obs")
        for col, parts in self._obs.items():
            values = np.array([("" if v is None else str(v)) for v in np.concatenate(parts)], dtype=object)
            cats, codes = np.unique(values, return_inverse=True)
            codes = codes.astype(np.int32)
            if len(cats) and cats[0] == "":
                codes -= 1
                cats = cats[1:]
            _write_array(obs_group, col, codes, 65536, self.codec, self.config)
            obs_group[col].attrs["categories"] = [str(c) for c in cats]
        num_group = self.group.create_group("obs_num")
        for col, parts in self._obs_num.items():
            _write_array(num_group, col, np.concatenate(parts), 65536, self.codec, self.config)
        return self.n_cells, self.nnz


def write_shard(root: Path, name: str, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                obs: dict[str, np.ndarray], obs_num: dict[str, np.ndarray], *,
                codec: str = "blosc-lz4-bitshuffle", chunk_cells: int = 1024, checksum: bool = True) -> None:
    """Write one whole CSR shard under ``root/shards/name`` (``StoreWriter.add_shard``).

    ``obs`` values are string arrays (``None``/"" = missing), stored as codes + categories.
    """
    appender = ShardAppender(root, name, codec=codec, chunk_cells=chunk_cells, checksum=checksum)
    appender.append(indptr, indices, data, obs, obs_num)
    appender.close()


class ShardSequence:
    """Consecutive shards of one source, ``shard_cells`` cells each, named ``PREFIX00000``...

    Blocks of any size go in; a block crossing a shard boundary is split, so every shard but
    the last is full and none is ever rewritten.
    """

    def __init__(self, root: Path, prefix: str, *, shard_cells: int, codec: str = "blosc-lz4-bitshuffle",
                 chunk_cells: int = 1024, checksum: bool = True):
        self.root, self.prefix, self.shard_cells = Path(root), prefix, shard_cells
        self.codec, self.chunk_cells, self.checksum = codec, chunk_cells, checksum
        self.done: list[tuple[str, int, int]] = []  # (name, n_cells, nnz)
        self._current: ShardAppender | None = None
        self._done_integral = True

    def append(self, matrix, obs: dict[str, np.ndarray], obs_num: dict[str, np.ndarray]) -> None:
        """Add the rows of a CSR matrix (scipy) with their per-cell metadata."""
        pos, n = 0, matrix.shape[0]
        while pos < n:
            if self._current is None:
                self._current = ShardAppender(self.root, self._name(), codec=self.codec,
                                              chunk_cells=self.chunk_cells, checksum=self.checksum)
            take = min(n - pos, self.shard_cells - self._current.n_cells)
            rows = matrix if take == n else matrix[pos: pos + take]
            self._current.append(rows.indptr, rows.indices, rows.data,
                                 {c: v[pos: pos + take] for c, v in obs.items()},
                                 {c: v[pos: pos + take] for c, v in obs_num.items()})
            pos += take
            if self._current.n_cells == self.shard_cells:
                self._finish()

    @property
    def integral(self) -> bool:
        """Whether every value written so far is a whole number (stored as int32)."""
        return self._done_integral and (self._current is None or self._current.integral)

    def close(self) -> list[tuple[str, int, int]]:
        if self._current is not None and self._current.n_cells:
            self._finish()
        return self.done

    def _name(self) -> str:
        return f"{self.prefix}{len(self.done):05d}"

    def _finish(self) -> None:
        self._done_integral &= self._current.integral
        n_cells, nnz = self._current.close()
        self.done.append((self._name(), n_cells, nnz))
        self._current = None
