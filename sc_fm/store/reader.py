"""``CorpusStore``: read access to a complete corpus store (layout in ``sc_fm.store``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import zarr

from sc_fm.errors import InputDataError
from sc_fm.stats import GeneStats
from sc_fm.store.direct import SliceReader
from sc_fm.store.layout import (FORMAT, FORMAT_VERSION, GLOBAL_GROUP, READ_VERSIONS, STATS_FIELDS,
                                STATS_SCALE_BEFORE_RECORDED,
                                ShardInfo, plain_name)
from sc_fm.store.location import filesystem, is_object, is_url, join, remote_call
from sc_fm.vocab import GeneVocab


class CorpusStore:
    """Read access to a complete corpus store; all cell indices are global across shards.

    ``path`` is a local folder or an fsspec URL (``s3://bucket/corpus.zarr``): ``self.path`` is
    then a ``Path`` or the URL string. A remote store reads through zarr's ``FsspecStore``; its
    handles are made again in a forked loader worker (an S3 client does not survive a fork).
    """

    def __init__(self, path: str | Path):
        self.remote = is_url(path)
        self.path: Path | str = str(path).rstrip("/") if self.remote else Path(path)
        if not self._is_file("zarr.json"):
            raise InputDataError(f"{self.path} is not a corpus store (no zarr.json)", str(self.path),
                                 "create it with `scfm prepare SOURCE -o STORE`"
                                 + (" (a store being uploaded shows as this until its upload is "
                                    "complete)" if self.remote else ""))
        try:
            self.root = self._group("")
            attrs = dict(self.root.attrs)
        except InputDataError:
            raise
        except Exception as err:  # zarr's JSON and metadata errors have no common base class
            raise InputDataError(f"zarr.json cannot be read ({type(err).__name__}: {err})",
                                 self._where("zarr.json"), _DAMAGED) from err
        if attrs.get("format") != FORMAT:
            raise InputDataError(f"format is {attrs.get('format')!r}, not {FORMAT!r}", str(self.path),
                                 "point at a store written by `scfm prepare`")
        if attrs.get("format_version") not in READ_VERSIONS:
            raise InputDataError(f"store format version {attrs.get('format_version')!r} is not supported "
                                 f"(this sc_fm reads versions {', '.join(map(str, READ_VERSIONS))} and "
                                 f"writes {FORMAT_VERSION})", str(self.path),
                                 "re-run `scfm prepare` with this version of sc_fm")
        if not attrs.get("complete"):
            raise InputDataError("store is incomplete (its ingest did not finish)", str(self.path),
                                 "delete it and re-run `scfm prepare`")
        self.attrs = attrs
        self.shards = _shard_infos(attrs.get("shards"), self._where("zarr.json"))
        self.stats_version = _stats_version(attrs.get("stats_version"), self._where("zarr.json"))
        # the counts per cell of the statistics' depth normalisation (the medians' scale)
        self.stats_target_sum = float(attrs.get("stats_target_sum", STATS_SCALE_BEFORE_RECORDED))
        listed = sum(s.n_cells for s in self.shards)
        if attrs.get("n_cells") != listed:
            raise InputDataError(f"n_cells is {attrs.get('n_cells')!r} but the listed shards hold {listed} "
                                 "cells", self._where("zarr.json"), _DAMAGED)
        self.offsets = np.cumsum([0] + [s.n_cells for s in self.shards])
        self.categories: dict[str, list[str]] = attrs.get("categories", {})
        self._vocab: GeneVocab | None = None
        self._shard_groups: dict[int, zarr.Group] = {}
        self._readers: dict[tuple[int, str], SliceReader] = {}
        self._obs_categories: dict[tuple[int, str], list[str] | None] = {}
        self._pid = os.getpid()

    # ---- where the files are: a local folder or object storage ----------------------------
    def _where(self, rel: str) -> str:
        """A file of the store, as messages name it."""
        return join(self.path, rel) if self.remote else str(self.path / rel)

    def _is_file(self, rel: str) -> bool:
        if not self.remote:
            return (self.path / rel).is_file()
        fs, key = filesystem(join(self.path, rel))
        return remote_call(lambda: is_object(fs, key), self._where(rel), "looking up the store")

    def _read_bytes(self, rel: str) -> bytes:
        if not self.remote:
            return (self.path / rel).read_bytes()
        fs, key = filesystem(join(self.path, rel))
        return remote_call(lambda: fs.cat_file(key), self._where(rel), f"reading {rel}")

    def _group(self, rel: str) -> zarr.Group:
        if not self.remote:
            return zarr.open_group(self.path / rel, mode="r")
        from zarr.storage import FsspecStore

        url = join(self.path, rel) if rel else self.path
        return remote_call(lambda: zarr.open_group(FsspecStore.from_url(url, read_only=True), mode="r"),
                           url, "opening the store")

    def _fresh(self) -> None:
        """In a forked process, drop the parent's remote handles (opened again on use)."""
        if self.remote and self._pid != os.getpid():
            self._pid = os.getpid()
            self.root = self._group("")
            self._shard_groups.clear()
            self._readers.clear()

    def __getstate__(self) -> dict:
        """Pickled (a spawned worker): remote handles are made again on the other side."""
        state = dict(self.__dict__)
        if self.remote:
            state.update(root=None, _shard_groups={}, _readers={}, _pid=-1)
        return state

    @property
    def format_version(self) -> int:
        """1: chunks carry no checksums; 2: every chunk ends with a crc32c, verified on read."""
        return int(self.attrs["format_version"])

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
            self._vocab = self._remote_vocab() if self.remote else GeneVocab.load(self.path / "vocab.tsv")
        return self._vocab

    def _remote_vocab(self) -> GeneVocab:
        """``vocab.tsv`` fetched into a temporary folder and read there, as a local store's is."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="scfm-vocab-") as folder:
            local = Path(folder) / "vocab.tsv"
            local.write_bytes(self._read_bytes("vocab.tsv"))
            return GeneVocab.load(local)

    @property
    def manifest(self) -> list[dict]:
        name = f"manifest-v{self.stats_version}.json"
        path = self._where(name)
        if not self._is_file(name):
            return []
        try:
            rows = json.loads(self._read_bytes(name))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputDataError(f"the manifest is not valid JSON ({err})", str(path),
                                 "restore it from a copy (the cells and statistics do not depend on it), "
                                 "or re-create the store with `scfm prepare`") from err
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise InputDataError("the manifest is not a list of source rows", str(path),
                                 "restore it from a copy, or re-create the store with `scfm prepare`")
        return rows

    def shard(self, k: int) -> zarr.Group:
        self._fresh()
        if k not in self._shard_groups:
            rel = f"shards/{self.shards[k].name}"
            if not self._is_file(f"{rel}/zarr.json"):
                raise InputDataError(f"shard {self.shards[k].name} is listed in zarr.json but missing",
                                     self._where(rel), "restore the shard folder from a copy, or re-create "
                                     "the store with `scfm prepare` (`scfm verify` lists what else is wrong)")
            self._shard_groups[k] = self._group(rel)
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

    def chunk_rows(self, k: int) -> int | None:
        """About how many rows one ``indices`` chunk of shard ``k`` holds, where a read decodes
        whole chunks (codecs other than blosc, or no c-blosc); None where a read decodes only
        the blosc blocks it needs, so that a small read costs little more per row."""
        reader = self._slices(k, "indices")
        if reader.directory is not None or not self.shards[k].n_cells:
            return None
        nonzeros_per_row = max(1, self.shards[k].nnz // self.shards[k].n_cells)
        return max(1, reader.chunk // nonzeros_per_row)

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
        self._fresh()
        if (k, name) not in self._readers:
            self._readers[k, name] = SliceReader(self.shard(k)[name], self.path, self.shards[k].name, name)
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
            parts.append(self._slices(k, f"obs_num/{column}").whole() if column in num
                         else np.full(info.n_cells, np.nan, np.float32))
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
        self._fresh()
        where = self._where("zarr.json")
        for key, value in groups[group].items():
            plain_name(group, "statistics group", where)
            plain_name(key, f"statistics key of group {group!r}", where)
            name = f"stats/v{self.stats_version}/{group}/{key}"
            node = self.root[name]
            out[value] = GeneStats(int(node.attrs["n_cells"]),
                                   *(SliceReader(node[f], self.path, None, f"{name}/{f}").whole()
                                     for f in STATS_FIELDS))
        return out


_DAMAGED = ("the store's zarr.json was edited or damaged: restore it, or re-create the store with "
            "`scfm prepare`")


def _shard_infos(listed: object, where: str) -> list[ShardInfo]:
    """The root attrs' ``shards`` list, each name a plain name inside ``shards/``."""
    fix = ("the store's zarr.json was edited or damaged: restore it, or re-create the store with "
           "`scfm prepare`")
    if not isinstance(listed, list):
        raise InputDataError("root attribute 'shards' is not a list", str(where), fix)
    infos = []
    for i, entry in enumerate(listed):
        if (not isinstance(entry, dict) or set(entry) != {"name", "n_cells", "nnz", "source"}
                or any(not isinstance(entry[k], int) or isinstance(entry[k], bool) or entry[k] < 0
                       for k in ("n_cells", "nnz"))):
            raise InputDataError(f"shard entry {i} ({entry!r}) is not {{name, n_cells >= 0, nnz >= 0, "
                                 "source}", str(where), fix)
        infos.append(ShardInfo(plain_name(entry["name"], f"shard {i} name", str(where)), entry["n_cells"],
                               entry["nnz"], str(entry["source"])))
    return infos


def _stats_version(version: object, where: str) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputDataError(f"root attribute 'stats_version' is {version!r}, not a positive integer",
                             str(where), "the store's zarr.json was edited or damaged: restore it, or "
                             "re-create the store with `scfm prepare`")
    return version
