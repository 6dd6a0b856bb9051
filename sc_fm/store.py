"""The corpus store: a self-describing Zarr directory of CSR cell shards.

Layout (all arrays compressed; see ``codec_for``)::

    STORE/zarr.json           root attrs: format, format_version, vocab hash/name, n_cells,
                              n_genes, shards [{name, n_cells, nnz, source}], categories,
                              stats_version, complete
    STORE/vocab.tsv           the gene vocabulary (``GeneVocab.save``)
    STORE/manifest-vN.json    every source: path, checksum, cells read/kept, drops by reason
    STORE/shards/NAME/        indptr int64 [n+1], indices int32 [nnz] (sorted per row, vocabulary
                              space), data int32 (integral counts) or float32 [nnz];
                              obs/COL int32 codes (-1 missing) with ``categories`` attr;
                              obs_num/COL float32 (QC figures)
    STORE/stats/vN/GROUP/K/   one ``GeneStats`` per value K of a grouping column
                              (``global`` holds all cells)

A new store is written at ``STORE.partial-*`` and renamed into place when complete. Appending
writes new shard directories first, then atomically rewrites the root attrs (Zarr writes
metadata through a temporary file and rename) to list them; old shards are never touched,
and a failed append leaves the store as it was.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from sc_fm.errors import InputDataError
from sc_fm.stats import GeneStats, GeneStatsAccumulator
from sc_fm.vocab import GeneVocab

FORMAT = "sc_fm.corpus"
FORMAT_VERSION = 1
GLOBAL_GROUP = "global"
_STATS_FIELDS = ("n_expr", "sum_counts", "sum_norm", "sumsq_norm", "nonzero_median", "hist")


def codec_for(name: str):
    """Compressor for a codec name (benchmarked in ``benchmarks/ingest.py``)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "blosc-lz4-bitshuffle":
        return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    if name == "blosc-zstd":
        return BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")
    if name == "zstd":
        return ZstdCodec(level=1)
    raise InputDataError(f"unknown codec {name!r}", "prepare.codec",
                         "use blosc-lz4-bitshuffle, blosc-zstd or zstd")


@dataclass(frozen=True)
class ShardInfo:
    name: str
    n_cells: int
    nnz: int
    source: str


def _write_array(group: zarr.Group, name: str, values: np.ndarray, chunk: int, codec) -> None:
    chunk = max(1, min(chunk, len(values))) if len(values) else 1
    arr = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=(chunk,),
                             compressors=codec)
    if len(values):
        arr[:] = values


def _as_integer_counts(data: np.ndarray) -> np.ndarray | None:
    """``data`` as int32 when every value is a whole number that fits, else None.

    One cast and one comparison: cheaper than testing ``value % 1`` and then casting anyway.
    """
    if data.dtype.kind in "iu":
        return data.astype(np.int32, copy=False)
    with np.errstate(invalid="ignore"):
        whole = data.astype(np.int32)
    return whole if np.array_equal(whole, data) else None


class _ChunkAlignedArray:
    """A growing 1-D Zarr array written only in whole chunks (no read-modify-write of a
    partial chunk); the tail waits in memory until the next append or ``close``.

    Whole chunks are written straight from the appended array: only the chunk that joins the
    old tail to the new values is assembled in memory.
    """

    def __init__(self, group: zarr.Group, name: str, dtype, chunk: int, codec):
        self.group, self.name, self.chunk, self.codec = group, name, max(1, chunk), codec
        self.array = group.create_array(name, shape=(0,), dtype=dtype, chunks=(self.chunk,),
                                        compressors=codec)
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
                                             chunks=(self.chunk,), compressors=self.codec)
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
    """

    def __init__(self, root: Path, name: str, *, codec: str = "blosc-lz4-bitshuffle",
                 chunk_cells: int = 1024):
        self.group = zarr.open_group(Path(root) / "shards" / name, mode="w")
        self.codec = codec_for(codec)
        self.chunk_cells = chunk_cells
        self.n_cells = 0
        self.nnz = 0
        self._indptr = _ChunkAlignedArray(self.group, "indptr", np.int64, chunk_cells * 8, self.codec)
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
        whole = _as_integer_counts(data)
        if self._data is None:
            chunk = self.chunk_cells * max(int(indptr[-1]) // max(n, 1), 1)
            dtype = np.int32 if whole is not None else np.float32
            self._indices = _ChunkAlignedArray(self.group, "indices", np.int32, chunk, self.codec)
            self._data = _ChunkAlignedArray(self.group, "data", dtype, chunk, self.codec)
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

    def close(self) -> tuple[int, int]:
        """Flush the tails and write metadata; returns ``(n_cells, nnz)``."""
        if self._data is None:
            self._indices = _ChunkAlignedArray(self.group, "indices", np.int32, 1, self.codec)
            self._data = _ChunkAlignedArray(self.group, "data", np.int32, 1, self.codec)
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
            _write_array(obs_group, col, codes, 65536, self.codec)
            obs_group[col].attrs["categories"] = [str(c) for c in cats]
        num_group = self.group.create_group("obs_num")
        for col, parts in self._obs_num.items():
            _write_array(num_group, col, np.concatenate(parts), 65536, self.codec)
        return self.n_cells, self.nnz


def write_shard(root: Path, name: str, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                obs: dict[str, np.ndarray], obs_num: dict[str, np.ndarray], *,
                codec: str = "blosc-lz4-bitshuffle", chunk_cells: int = 1024) -> None:
    """Write one whole CSR shard under ``root/shards/name`` (a process-safe, standalone step).

    ``obs`` values are string arrays (``None``/"" = missing), stored as codes + categories.
    """
    appender = ShardAppender(root, name, codec=codec, chunk_cells=chunk_cells)
    appender.append(indptr, indices, data, obs, obs_num)
    appender.close()


class CorpusStore:
    """Read access to a complete corpus store; all cell indices are global across shards."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise InputDataError(f"{self.path} is not a corpus store (no zarr.json)", str(self.path),
                                 "create it with `scfm prepare SOURCE -o STORE`")
        self.root = zarr.open_group(self.path, mode="r")
        attrs = dict(self.root.attrs)
        if attrs.get("format") != FORMAT:
            raise InputDataError(f"format is {attrs.get('format')!r}, not {FORMAT!r}", str(self.path),
                                 "point at a store written by `scfm prepare`")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise InputDataError(f"store format version {attrs.get('format_version')} is not supported "
                                 f"(this sc_fm reads version {FORMAT_VERSION})", str(self.path),
                                 "re-run `scfm prepare` with this version of sc_fm")
        if not attrs.get("complete"):
            raise InputDataError("store is incomplete (its ingest did not finish)", str(self.path),
                                 "delete it and re-run `scfm prepare`")
        self.attrs = attrs
        self.shards = [ShardInfo(**s) for s in attrs["shards"]]
        self.offsets = np.cumsum([0] + [s.n_cells for s in self.shards])
        self.categories: dict[str, list[str]] = attrs.get("categories", {})
        self._vocab: GeneVocab | None = None
        self._shard_groups: dict[int, zarr.Group] = {}
        self._readers: dict[tuple[int, str], SliceReader] = {}
        self._obs_categories: dict[tuple[int, str], list[str] | None] = {}

    @property
    def n_cells(self) -> int:
        return int(self.attrs["n_cells"])

    @property
    def n_genes(self) -> int:
        return int(self.attrs["n_genes"])

    @property
    def vocab_hash(self) -> str:
        return str(self.attrs["vocab_hash"])

    @property
    def vocab(self) -> GeneVocab:
        if self._vocab is None:
            self._vocab = GeneVocab.load(self.path / "vocab.tsv")
        return self._vocab

    @property
    def manifest(self) -> list[dict]:
        path = self.path / f"manifest-v{self.attrs['stats_version']}.json"
        return json.loads(path.read_text()) if path.is_file() else []

    def shard(self, k: int) -> zarr.Group:
        if k not in self._shard_groups:
            self._shard_groups[k] = zarr.open_group(self.path / "shards" / self.shards[k].name, mode="r")
        return self._shard_groups[k]

    def locate(self, cell: int) -> tuple[int, int]:
        """Global cell index -> (shard number, row inside the shard)."""
        k = int(np.searchsorted(self.offsets, cell, side="right") - 1)
        return k, int(cell - self.offsets[k])

    def read_rows(self, k: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``[start, stop)`` of shard ``k`` as CSR (indptr from 0, indices, data).

        Reads the contiguous slice of ``indices``/``data`` (see ``SliceReader``): no per-cell
        random access.
        """
        indptr = self._slices(k, "indptr")(start, stop + 1)
        lo, hi = int(indptr[0]), int(indptr[-1])
        return indptr - lo, self._slices(k, "indices")(lo, hi), self._slices(k, "data")(lo, hi)

    def shard_obs(self, k: int, column: str, start: int, stop: int) -> tuple[np.ndarray, list[str]] | None:
        """Codes (-1 missing) and categories of ``column`` for rows ``[start, stop)`` of shard
        ``k``; None where the shard lacks the column. Array handles and categories are opened
        once per shard: opening them per call (metadata reads) cost more than the codes."""
        if (k, column) not in self._obs_categories:
            obs = self.shard(k)["obs"]
            self._obs_categories[k, column] = (list(obs[column].attrs["categories"])
                                               if column in obs else None)
        categories = self._obs_categories[k, column]
        if categories is None:
            return None
        return self._slices(k, f"obs/{column}")(start, stop), categories

    def _slices(self, k: int, name: str) -> SliceReader:
        if (k, name) not in self._readers:
            self._readers[k, name] = SliceReader(self.shard(k)[name])
        return self._readers[k, name]

    def obs_codes(self, column: str) -> np.ndarray:
        """Global categorical codes of ``column`` for every cell (-1 where missing)."""
        if column not in self.categories:
            raise InputDataError(f"no cell metadata column {column!r}", str(self.path),
                                 f"use one of: {', '.join(sorted(self.categories)) or '(none)'}")
        lookup = {c: i for i, c in enumerate(self.categories[column])}
        parts = []
        for k, info in enumerate(self.shards):
            found = self.shard_obs(k, column, 0, info.n_cells)
            if found is None:
                parts.append(np.full(info.n_cells, -1, np.int32))
                continue
            local, categories = found
            remap = np.array([lookup[c] for c in categories] + [-1], np.int32)
            parts.append(remap[local])  # code -1 indexes the trailing -1
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)

    def obs_values(self, column: str) -> np.ndarray:
        """Per-cell category strings of ``column`` (``None`` where missing)."""
        cats = np.array(self.categories[column] + [None], dtype=object)
        return cats[self.obs_codes(column)]

    def obs_numeric(self, column: str) -> np.ndarray:
        parts = []
        for k, info in enumerate(self.shards):
            num = self.shard(k)["obs_num"]
            parts.append(num[column][:] if column in num else np.full(info.n_cells, np.nan, np.float32))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    @property
    def stats_groups(self) -> list[str]:
        return list(self.attrs.get("stats_groups", {}))

    def stats(self, group: str = GLOBAL_GROUP) -> dict[str, GeneStats]:
        """Statistics per value of a grouping column (``global`` -> {"all": ...})."""
        groups = self.attrs.get("stats_groups", {})
        if group not in groups:
            raise InputDataError(f"no statistics for group {group!r}", str(self.path),
                                 f"use one of {sorted(groups)} or re-run `scfm prepare` with "
                                 f"prepare.stats_groups including {group!r}")
        out = {}
        for key, value in groups[group].items():
            node = self.root[f"stats/v{self.attrs['stats_version']}/{group}/{key}"]
            out[value] = GeneStats(int(node.attrs["n_cells"]), *(node[f][:] for f in _STATS_FIELDS))
        return out


@functools.cache
def _blosc() -> ctypes.CDLL | None:
    """c-blosc as numcodecs ships it (its extension exports the C API), or None where it does
    not. The functions used keep no global state (safe in threads): ``blosc_getitem`` decodes a
    range of a frame, touching only the blosc blocks (~512 kB) that hold it;
    ``blosc_decompress_ctx`` a whole frame; ``blosc_cbuffer_validate`` checks a header first."""
    try:
        import numcodecs.blosc

        lib = ctypes.CDLL(numcodecs.blosc.__file__)
        frame, out, size, int_ = ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        lib.blosc_getitem.argtypes = (frame, int_, int_, out)
        lib.blosc_decompress_ctx.argtypes = (frame, out, size, int_)
        lib.blosc_cbuffer_validate.argtypes = (frame, size, ctypes.POINTER(size))
    except (ImportError, OSError, AttributeError):
        return None
    for function in (lib.blosc_getitem, lib.blosc_decompress_ctx, lib.blosc_cbuffer_validate):
        function.restype = ctypes.c_int
    return lib


class SliceReader:
    """``reader(lo, hi)``: elements ``[lo, hi)`` of a 1-D store array.

    A loader block (``data.block_cells`` rows) rarely lines up with the chunks, which hold
    about ``chunk_cells`` rows sized from nonzeros, so it usually straddles two; through zarr
    that decodes both whole chunks (~2x the needed work) plus per-call overhead (event loop,
    copies). Chunks that are plain blosc frames in local files are instead decoded straight
    into the result, and of a partly needed chunk only the blosc blocks that hold the range.
    Any other layout (codecs, store kind, byte order) reads through zarr.
    """

    def __init__(self, array: zarr.Array):
        self.array = array
        self.chunk = int(array.chunks[0])
        self.directory = self._direct_directory(array, self.chunk)

    @staticmethod
    def _direct_directory(array: zarr.Array, chunk: int) -> Path | None:
        from zarr.codecs import BloscCodec, BytesCodec
        from zarr.storage import LocalStore

        codecs = getattr(array.metadata, "codecs", ())  # Zarr v2 metadata has none
        plain = (array.ndim == 1 and chunk < 2**31 and isinstance(array.store, LocalStore)
                 and sys.byteorder == "little" and len(codecs) == 2 and isinstance(codecs[0], BytesCodec)
                 and (array.dtype.itemsize == 1 or codecs[0].endian == codecs[0].endian.little)
                 and isinstance(codecs[1], BloscCodec) and _blosc() is not None)
        return Path(array.store.root) / array.path if plain else None

    def __call__(self, lo: int, hi: int) -> np.ndarray:
        if hi <= lo:
            return np.zeros(0, self.array.dtype)
        if self.directory is None:
            return self.array[lo:hi]
        out = np.empty(hi - lo, self.array.dtype)
        for j in range(lo // self.chunk, (hi - 1) // self.chunk + 1):
            first = j * self.chunk
            a, b = max(lo, first), min(hi, first + self.chunk)
            self._decode(j, a - first, b - a, out[a - lo: b - lo])
        return out

    def _decode(self, j: int, start: int, n: int, out: np.ndarray) -> None:
        """Items ``[start, start + n)`` of chunk ``j`` into ``out``."""
        path = self.directory / self.array.metadata.encode_chunk_key((j,))
        try:
            frame = path.read_bytes()
        except FileNotFoundError:  # zarr leaves out chunks that are all fill value
            out[:] = self.array.metadata.fill_value
            return
        lib = _blosc()
        size = ctypes.c_size_t()  # the header must fit the file and hold one whole chunk
        done = lib.blosc_cbuffer_validate(frame, len(frame), ctypes.byref(size))
        if done == 0 and size.value != self.chunk * out.itemsize:
            done = -1
        elif done == 0 and n == self.chunk:
            done = lib.blosc_decompress_ctx(frame, out.ctypes.data, out.nbytes, 1)  # 1 thread
        elif done == 0:
            done = lib.blosc_getitem(frame, start, n, out.ctypes.data)
        if done != out.nbytes:
            raise InputDataError(f"chunk {path} does not decode ({done})", str(path),
                                 "the store is damaged: re-run `scfm prepare`")


class StoreWriter:
    """Creates a store (or appends to one) and makes it visible only on ``commit``.

    Use as a context manager: an exception inside the block removes everything written.
    Shards may be written by other processes with ``write_shard(writer.stage_dir, name, ...)``
    followed by ``writer.register_shard(...)``.
    """

    def __init__(self, path: str | Path, vocab: GeneVocab, *, append: bool = False,
                 codec: str = "blosc-lz4-bitshuffle", chunk_cells: int = 1024):
        self.path = Path(path)
        self.vocab = vocab
        self.append = append
        self.codec = codec
        self.chunk_cells = chunk_cells
        self.new_shards: list[ShardInfo] = []
        self._token = uuid.uuid4().hex[:8]
        self.old: CorpusStore | None = None
        if append:
            self.old = CorpusStore(self.path)
            if self.old.vocab_hash != vocab.hash:
                raise InputDataError(
                    f"store vocabulary {self.old.vocab_hash} differs from this ingest's {vocab.hash}",
                    str(self.path), "append with the store's own vocabulary (prepare.vocab="
                    f"{self.path / 'vocab.tsv'}) or write a new store")
            self.stage_dir = self.path
        else:
            if self.path.exists():
                raise InputDataError(f"{self.path} already exists", str(self.path),
                                     "choose a new output path, delete it, or pass --append")
            self.stage_dir = self.path.with_name(f"{self.path.name}.partial-{self._token}")
            self.stage_dir.mkdir(parents=True)

    def shard_name(self, index: int) -> str:
        return f"s{self._token}-{index:05d}"

    def shard_prefix(self, source_index: int) -> str:
        """Name prefix for the shards of one source, so parallel sources never collide."""
        return f"s{self._token}-{source_index:04d}-"

    def add_shard(self, indptr, indices, data, obs, obs_num, source: str) -> ShardInfo:
        name = self.shard_name(len(self.new_shards))
        write_shard(self.stage_dir, name, indptr, indices, data, obs, obs_num,
                    codec=self.codec, chunk_cells=self.chunk_cells)
        return self.register_shard(name, len(indptr) - 1, int(indptr[-1]), source)

    def register_shard(self, name: str, n_cells: int, nnz: int, source: str) -> ShardInfo:
        info = ShardInfo(name, int(n_cells), int(nnz), source)
        self.new_shards.append(info)
        return info

    def existing_stats(self) -> dict[str, dict[str, GeneStatsAccumulator]]:
        """The old store's statistics as accumulators, for merging on append."""
        if self.old is None:
            return {}
        return {g: {v: GeneStatsAccumulator.from_stats(s) for v, s in self.old.stats(g).items()}
                for g in self.old.stats_groups}

    def commit(self, stats: dict[str, dict[str, GeneStatsAccumulator]], manifest: list[dict]) -> None:
        """Write statistics, vocabulary and manifest, then make the store visible."""
        old_shards = [s.__dict__ for s in self.old.shards] if self.old else []
        shards = old_shards + [s.__dict__ for s in self.new_shards]
        version = int(self.old.attrs["stats_version"]) + 1 if self.old else 1
        root = zarr.open_group(self.stage_dir, mode="a")
        comp = codec_for(self.codec)
        groups_index: dict[str, dict[str, str]] = {}
        for group, by_value in stats.items():
            groups_index[group] = {}
            for i, (value, acc) in enumerate(sorted(by_value.items())):
                node = root.create_group(f"stats/v{version}/{group}/{i}")
                node.attrs["n_cells"] = int(acc.n_cells)
                finished = acc.finish()
                for name in _STATS_FIELDS:
                    values = getattr(finished, name)
                    node.create_array(name, shape=values.shape, dtype=values.dtype,
                                      chunks=values.shape, compressors=comp)[...] = values
                groups_index[group][str(i)] = value
        old_manifest = self.old.manifest if self.old else []
        _atomic_write_text(self.stage_dir / f"manifest-v{version}.json",
                           json.dumps(old_manifest + manifest, indent=1))
        if not self.old:
            self.vocab.save(self.stage_dir / "vocab.tsv")
        categories = dict(self.old.categories) if self.old else {}
        for info in self.new_shards:
            obs = zarr.open_group(self.stage_dir / "shards" / info.name / "obs", mode="r")
            for col in obs.array_keys():
                known = categories.setdefault(col, [])
                known.extend(c for c in obs[col].attrs["categories"] if c not in set(known))
        root.attrs.put({
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "vocab_hash": self.vocab.hash, "vocab_name": self.vocab.name,
            "n_cells": int(sum(s["n_cells"] for s in shards)), "n_genes": self.vocab.n_genes,
            "shards": shards, "categories": categories,
            "stats_version": version, "stats_groups": groups_index, "complete": True,
        })
        if self.old:
            shutil.rmtree(self.stage_dir / "stats" / f"v{version - 1}", ignore_errors=True)
            (self.stage_dir / f"manifest-v{version - 1}.json").unlink(missing_ok=True)
        else:
            os.replace(self.stage_dir, self.path)

    def abort(self) -> None:
        """Remove everything this writer staged; an appended-to store keeps its old state."""
        if self.append:
            for info in self.new_shards:
                shutil.rmtree(self.stage_dir / "shards" / info.name, ignore_errors=True)
            for stray in (self.stage_dir / "shards").glob(f"s{self._token}-*"):
                shutil.rmtree(stray, ignore_errors=True)
            if self.old and not self._committed():
                staged = int(self.old.attrs["stats_version"]) + 1
                shutil.rmtree(self.stage_dir / "stats" / f"v{staged}", ignore_errors=True)
                (self.stage_dir / f"manifest-v{staged}.json").unlink(missing_ok=True)
        else:
            shutil.rmtree(self.stage_dir, ignore_errors=True)

    def _committed(self) -> bool:
        attrs = zarr.open_group(self.stage_dir, mode="r").attrs
        return attrs.get("stats_version") != self.old.attrs["stats_version"]

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{uuid.uuid4().hex[:6]}")
    tmp.write_text(text)
    os.replace(tmp, path)


class ShardSequence:
    """Consecutive shards of one source, ``shard_cells`` cells each, named ``PREFIX00000``...

    Blocks of any size go in; a block crossing a shard boundary is split, so every shard but
    the last is full and none is ever rewritten.
    """

    def __init__(self, root: Path, prefix: str, *, shard_cells: int, codec: str = "blosc-lz4-bitshuffle",
                 chunk_cells: int = 1024):
        self.root, self.prefix, self.shard_cells = Path(root), prefix, shard_cells
        self.codec, self.chunk_cells = codec, chunk_cells
        self.done: list[tuple[str, int, int]] = []  # (name, n_cells, nnz)
        self._current: ShardAppender | None = None

    def append(self, matrix, obs: dict[str, np.ndarray], obs_num: dict[str, np.ndarray]) -> None:
        """Add the rows of a CSR matrix (scipy) with their per-cell metadata."""
        pos, n = 0, matrix.shape[0]
        while pos < n:
            if self._current is None:
                self._current = ShardAppender(self.root, self._name(), codec=self.codec,
                                              chunk_cells=self.chunk_cells)
            take = min(n - pos, self.shard_cells - self._current.n_cells)
            rows = matrix if take == n else matrix[pos: pos + take]
            self._current.append(rows.indptr, rows.indices, rows.data,
                                 {c: v[pos: pos + take] for c, v in obs.items()},
                                 {c: v[pos: pos + take] for c, v in obs_num.items()})
            pos += take
            if self._current.n_cells == self.shard_cells:
                self._finish()

    def close(self) -> list[tuple[str, int, int]]:
        if self._current is not None and self._current.n_cells:
            self._finish()
        return self.done

    def _name(self) -> str:
        return f"{self.prefix}{len(self.done):05d}"

    def _finish(self) -> None:
        n_cells, nnz = self._current.close()
        self.done.append((self._name(), n_cells, nnz))
        self._current = None
