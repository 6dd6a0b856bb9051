"""``StoreWriter``: creates a corpus store, or appends to one, visible only on ``commit``."""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
import weakref
from pathlib import Path

import zarr

from sc_fm.config import CP10K
from sc_fm.errors import InputDataError
from sc_fm.stats import GeneStatsAccumulator
from sc_fm.store.lock import StoreLock
from sc_fm.store.layout import FORMAT, FORMAT_VERSION, STATS_FIELDS, ShardInfo, array_config, codec_for
from sc_fm.store.reader import CorpusStore
from sc_fm.store.shards import write_shard
from sc_fm.vocab import GeneVocab


class StoreWriter:
    """Creates a store (or appends to one) and makes it visible only on ``commit``.

    Use as a context manager: an exception inside the block removes everything written.
    Shards are written either here (``add_shard``) or, as ``scfm prepare`` does, by ingestion
    worker processes: each task writes its own shards with a ``ShardSequence`` under
    ``writer.stage_dir``, named by ``writer.shard_prefix(task)``, and the parent then lists
    them in task order with ``writer.register_shard(...)``.

    A writer holds the store's writer lock (``StoreLock``, ``STORE.lock``) from its creation
    until it commits or aborts, so concurrent writers (two ``--append`` runs) take turns: the
    next version number, statistics and manifest are only ever decided by the lock's holder.
    Clean-up removes only what this writer made (its token's shards, the statistics and
    manifest it wrote), never another writer's files.

    Format: a new store is written as ``FORMAT_VERSION`` (2: a checksum per chunk) unless
    ``format_version=1`` is asked for (tests of old stores); an append keeps the store's own
    format, so a format 1 store stays format 1 (its old chunks have no checksums to add).
    ``self.checksum`` tells shard writers which to write.
    """

    def __init__(self, path: str | Path, vocab: GeneVocab, *, append: bool = False,
                 codec: str = "blosc-lz4-bitshuffle", chunk_cells: int = 1024,
                 lock_timeout: float | None = None, format_version: int | None = None):
        if format_version not in (None, 1, FORMAT_VERSION):
            raise ValueError(f"format_version {format_version!r}: this sc_fm writes 1 or {FORMAT_VERSION}")
        self.path = Path(path)
        self.lock = StoreLock(self.path, lock_timeout)
        self._written: list[Path] = []  # statistics and manifest this writer made, for abort
        self.committed = False
        self.lock.acquire()
        self._release = weakref.finalize(self, self.lock.release)  # a writer dropped unfinished
        try:
            self._open(vocab, append, codec, chunk_cells, format_version)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, vocab: GeneVocab, append: bool, codec: str, chunk_cells: int,
              format_version: int | None) -> None:
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
            self.format_version = self.old.format_version
        else:
            if self.path.exists():
                raise InputDataError(f"{self.path} already exists", str(self.path),
                                     "choose a new output path, delete it, or pass --append")
            for orphan in sorted(self.path.parent.glob(f"{self.path.name}.partial-*")):
                # under the lock no live writer stages this store: a killed run left it
                shutil.rmtree(orphan, ignore_errors=True)
                print(f"scfm: removed {orphan}, left by an interrupted `scfm prepare` of {self.path}",
                      file=sys.stderr)
            self.stage_dir = self.path.with_name(f"{self.path.name}.partial-{self._token}")
            self.stage_dir.mkdir(parents=True)
            self.format_version = format_version or FORMAT_VERSION
        self._unchecksummed = False  # a registered shard copied from a format 1 store (merge)

    @property
    def checksum(self) -> bool:
        """Whether new shards carry a checksum per chunk (the store is format 2)."""
        return self.format_version >= 2

    def shard_name(self, index: int) -> str:
        return f"s{self._token}-{index:05d}"

    def shard_prefix(self, source_index: int) -> str:
        """Name prefix for the shards of one source, so parallel sources never collide."""
        return f"s{self._token}-{source_index:04d}-"

    def add_shard(self, indptr, indices, data, obs, obs_num, source: str) -> ShardInfo:
        name = self.shard_name(len(self.new_shards))
        write_shard(self.stage_dir, name, indptr, indices, data, obs, obs_num,
                    codec=self.codec, chunk_cells=self.chunk_cells, checksum=self.checksum)
        return self.register_shard(name, len(indptr) - 1, int(indptr[-1]), source)

    def register_shard(self, name: str, n_cells: int, nnz: int, source: str,
                       checksummed: bool = True) -> ShardInfo:
        """List a shard written under ``stage_dir``; ``checksummed=False`` for one copied from a
        format 1 store, which makes the result format 1 (every chunk of format 2 has a checksum)."""
        self._unchecksummed |= not checksummed
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
        stats_dir = self.stage_dir / "stats" / f"v{version}"
        manifest_path = self.stage_dir / f"manifest-v{version}.json"
        if self.old:
            _remove_orphans(self.path, stats_dir, manifest_path)
        stats_dir.mkdir(parents=True)  # exclusive: under the lock, no other writer makes it
        self._written.append(stats_dir)
        root = zarr.open_group(self.stage_dir, mode="a")
        format_version = 1 if self._unchecksummed else self.format_version
        comp = codec_for(self.codec, format_version >= 2)
        config = array_config(format_version >= 2)
        groups_index: dict[str, dict[str, str]] = {}
        for group, by_value in stats.items():
            groups_index[group] = {}
            for i, (value, acc) in enumerate(sorted(by_value.items())):
                node = root.create_group(f"stats/v{version}/{group}/{i}")
                node.attrs["n_cells"] = int(acc.n_cells)
                finished = acc.finish()
                for name in STATS_FIELDS:
                    values = getattr(finished, name)
                    node.create_array(name, shape=values.shape, dtype=values.dtype,
                                      chunks=values.shape, compressors=comp, config=config)[...] = values
                groups_index[group][str(i)] = value
        old_manifest = self.old.manifest if self.old else []
        self._written.append(manifest_path)
        _atomic_write_text(manifest_path, json.dumps(old_manifest + manifest, indent=1))
        if not self.old:
            self.vocab.save(self.stage_dir / "vocab.tsv")
        categories = dict(self.old.categories) if self.old else {}
        for info in self.new_shards:
            obs = zarr.open_group(self.stage_dir / "shards" / info.name / "obs", mode="r")
            for col in obs.array_keys():
                known = categories.setdefault(col, [])
                known.extend(c for c in obs[col].attrs["categories"] if c not in set(known))
        root.attrs.put({
            "format": FORMAT, "format_version": format_version,
            "vocab_hash": self.vocab.hash, "vocab_name": self.vocab.name,
            "n_cells": int(sum(s["n_cells"] for s in shards)), "n_genes": self.vocab.n_genes,
            "shards": shards, "categories": categories,
            "stats_version": version, "stats_groups": groups_index, "stats_target_sum": CP10K, "complete": True,
        })
        if self.old:
            self.committed = True
            shutil.rmtree(self.stage_dir / "stats" / f"v{version - 1}", ignore_errors=True)
            (self.stage_dir / f"manifest-v{version - 1}.json").unlink(missing_ok=True)
        else:
            os.replace(self.stage_dir, self.path)
            self.committed = True
        self.lock.release()

    def abort(self) -> None:
        """Remove everything this writer staged, and only that; an appended-to store keeps its
        old state. Nothing is removed once the commit is done."""
        try:
            if self.committed:
                return
            if self.append:
                for info in self.new_shards:
                    shutil.rmtree(self.stage_dir / "shards" / info.name, ignore_errors=True)
                for stray in (self.stage_dir / "shards").glob(f"s{self._token}-*"):
                    shutil.rmtree(stray, ignore_errors=True)
                for path in self._written:
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
            else:
                shutil.rmtree(self.stage_dir, ignore_errors=True)
        finally:
            self.lock.release()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        self.lock.release()


def _remove_orphans(store: Path, stats_dir: Path, manifest_path: Path) -> None:
    """Remove the next version's statistics/manifest left by an append killed before its commit
    (the caller holds the lock, so no live writer owns them)."""
    for path in (stats_dir, manifest_path):
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            print(f"scfm: removed {path.relative_to(store)}, left in {store} by an interrupted append",
                  file=sys.stderr)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{uuid.uuid4().hex[:6]}")
    tmp.write_text(text)
    os.replace(tmp, path)
