"""Merging corpus stores: the second half of fanning sources out over a cluster.

Each cluster task ingests its sources into its own store (same vocabulary); ``merge_stores``
then copies their shards into one store (new or appended) and adds up their statistics and
manifests, without re-reading or re-checking a single cell.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

from data_pipelines.sources import duplicate_checksums
from data_pipelines.statistics import Grouped, merge_grouped
from sc_fm.errors import InputDataError
from sc_fm.stats import GeneStatsAccumulator
from sc_fm.store import CorpusStore, StoreWriter
from sc_fm.store.location import is_url
from sc_fm.store.publish import write_remote


def _grouped_stats(store: CorpusStore) -> Grouped:
    return {g: {v: GeneStatsAccumulator.from_stats(s) for v, s in store.stats(g).items()}
            for g in store.stats_groups}


def copy_shard(source: Path, target: Path) -> None:
    """Copy a shard folder without following a single symbolic link.

    A shard written by ``scfm prepare`` holds only folders and regular files; a symlink (or a
    device, FIFO, socket) inside a store is refused, so a crafted store cannot make a merge copy
    a file from outside it into the merged store.
    """
    mode = os.lstat(source).st_mode
    if not stat.S_ISDIR(mode):
        raise _not_plain(source, mode)
    target.mkdir(parents=True)
    with os.scandir(source) as entries:
        for entry in entries:
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                copy_shard(Path(entry.path), target / entry.name)
            elif stat.S_ISREG(mode):
                shutil.copyfile(entry.path, target / entry.name, follow_symlinks=False)
            else:
                raise _not_plain(Path(entry.path), mode)


def _not_plain(path: Path, mode: int) -> InputDataError:
    kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file or folder"
    return InputDataError(f"shard content is {kind}; merging copies only regular files and folders and "
                          "never follows links", str(path),
                          "replace the link with the file it points to (if that data belongs in the "
                          "store), or re-create the part with `scfm prepare`")


def merge_stores(parts: list[str | Path], output: str | Path, append: bool = False,
                 allow_duplicate_sources: bool = False, lock_timeout: float | None = None):
    """Copy the shards of ``parts`` into ``output`` (new, or appended to); returns a ``PrepareSummary``.

    A part named twice, or a source (by checksum) in two parts or already in the store, is
    refused unless ``allow_duplicate_sources``.
    """
    from data_pipelines.pipeline import PrepareSummary

    if is_url(output):  # merged locally, then published (sc_fm.store.publish)
        summary = write_remote(str(output), append, lock_timeout, lambda local: merge_stores(
            parts, local, append, allow_duplicate_sources, lock_timeout), progress=True)
        summary.store = CorpusStore(output)
        return summary
    began = time.perf_counter()
    resolved = [Path(p).resolve() for p in parts]
    for i, path in enumerate(resolved):
        if path in resolved[:i] and not allow_duplicate_sources:
            raise InputDataError("store is named twice among the parts to merge; its cells would be in "
                                 "the result twice", str(parts[i]),
                                 "name each part once, or set prepare.allow_duplicate_sources=true")
    stores = [CorpusStore(p) for p in parts]
    first = stores[0]
    for store in stores[1:]:
        if store.vocab_hash != first.vocab_hash:
            raise InputDataError(f"vocabulary {store.vocab_hash} differs from {first.path}'s "
                                 f"{first.vocab_hash}",
                                 str(store.path), "ingest every part with the same prepare.vocab")
        if sorted(store.stats_groups) != sorted(first.stats_groups):
            raise InputDataError(f"statistics groups {store.stats_groups} differ from {first.path}'s "
                                 f"{first.stats_groups}", str(store.path),
                                 "ingest every part with the same prepare.stats_groups")
    with StoreWriter(output, first.vocab, append=append, lock_timeout=lock_timeout) as writer:
        totals = writer.existing_stats()
        if writer.old and sorted(writer.old.stats_groups) != sorted(first.stats_groups):
            raise InputDataError(f"statistics groups {first.stats_groups} differ from the store's "
                                 f"{writer.old.stats_groups}", str(first.path),
                                 "ingest the parts with the store's prepare.stats_groups")
        rows = []
        for i, store in enumerate(stores):
            renamed = {}
            for k, info in enumerate(store.shards):
                renamed[info.name] = f"{writer.shard_prefix(i)}{k:05d}"
                copy_shard(store.path / "shards" / info.name,
                           writer.stage_dir / "shards" / renamed[info.name])
                writer.register_shard(renamed[info.name], info.n_cells, info.nnz, info.source,
                                      checksummed=store.format_version >= 2)
            merge_grouped(totals, _grouped_stats(store), first.n_genes)
            rows += [{**row, "shards": [renamed[name] for name in row.get("shards", [])]}
                     for row in store.manifest]
        duplicate_checksums(rows, writer.old.manifest if writer.old else [], allow_duplicate_sources,
                            str(output))
        writer.commit(totals, rows)
    return PrepareSummary(CorpusStore(output), rows, time.perf_counter() - began)
