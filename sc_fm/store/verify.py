"""Checking a whole store (``scfm verify``), and removing what interrupted writers left behind.

``verify_store`` first checks the checksum of every chunk of a format 2 store (each damaged or
missing chunk is one problem, naming shard, array and chunk; a format 1 store is reported as
unchecksummed), then reads every listed shard (through the same direct decoder training uses),
checks each against the root attributes (cells, nonzeros, a monotone row pointer, gene indices
inside the vocabulary, finite non-negative values, per-cell metadata lengths), and checks the
statistics, manifest and vocabulary against the shards. It lists as orphans what no listing
refers to: unlisted shard folders, statistics and manifests of other versions, temporary files,
and ``STORE.partial-*`` folders of new stores whose writer is gone. ``repair_store`` removes the
orphans while holding the store's writer lock, so it never removes a live writer's work.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sc_fm.errors import ScFmError
from sc_fm.store.direct import SliceReader
from sc_fm.store.layout import GLOBAL_GROUP, STATS_FIELDS
from sc_fm.store.lock import StoreLock, _read, _stale, lock_path
from sc_fm.store.reader import CorpusStore

_BLOCK_CELLS = 8192  # rows read at once: bounds memory on full-size shards


@dataclass
class VerifyReport:
    path: Path
    problems: list[str] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_cells: int = 0
    n_shards: int = 0
    format_version: int | None = None
    n_chunks: int = 0  # chunk checksums verified

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        form = ("" if self.format_version is None else
                f", format {self.format_version}: " + (f"{self.n_chunks:,} chunk checksums verified"
                                                       if self.format_version >= 2 else "unchecksummed"))
        head = (f"{self.path}: {'ok' if self.ok else f'{len(self.problems)} problem(s)'} "
                f"({self.n_cells:,} cells in {self.n_shards} shards checked{form})")
        lines = [head] + [f"problem: {p}" for p in self.problems]
        lines += [f"orphan:  {o}" for o in self.orphans] + [f"note:    {n}" for n in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"path": str(self.path), "ok": self.ok, "n_cells": self.n_cells, "n_shards": self.n_shards,
                "format_version": self.format_version, "checksummed_chunks": self.n_chunks,
                "problems": self.problems, "orphans": [str(o) for o in self.orphans], "notes": self.notes}


_ATTEMPTS = 3  # checks of a store that an append keeps changing, before the last report stands


def _listing(path: Path) -> bytes | None:
    try:
        return (path / "zarr.json").read_bytes()
    except OSError:
        return None


def verify_store(path: str | Path) -> VerifyReport:
    """Check the store; a check that found problems while the store's listing changed under it
    (an append published meanwhile) is repeated, so a concurrent writer is no false alarm."""
    for _ in range(_ATTEMPTS):
        before = _listing(Path(path))
        report = _verify_once(path)
        if report.ok or _listing(Path(path)) == before:
            return report
    report.notes.append(f"the store changed during each of {_ATTEMPTS} checks (a writer is appending); "
                        f"verify again once it is done")
    return report


def _verify_once(path: str | Path) -> VerifyReport:
    report = VerifyReport(Path(path))
    try:
        store = CorpusStore(path)
    except ScFmError as err:
        report.problems.append(err.message)
        return report
    except Exception as err:  # a damaged zarr.json that zarr itself cannot parse
        report.problems.append(f"zarr.json cannot be read ({type(err).__name__}: {err})")
        return report
    report.n_shards, report.n_cells = len(store.shards), store.n_cells
    report.format_version = store.format_version
    _check_vocab(store, report)
    for k in range(len(store.shards)):
        try:
            if _check_chunks(store, k, report):
                _check_shard(store, k, report)
        except Exception as err:  # anything a damaged shard raises is a finding, not a crash
            why = err.message if isinstance(err, ScFmError) else f"{type(err).__name__}: {err}"
            report.problems.append(f"shard {store.shards[k].name}: cannot be read ({why})")
    if sum(s.n_cells for s in store.shards) != store.n_cells:
        report.problems.append(f"zarr.json says n_cells={store.n_cells}, its shards hold "
                               f"{sum(s.n_cells for s in store.shards)}")
    _check_stats(store, report)
    _check_manifest(store, report)
    report.orphans = find_orphans(store)
    holder = _read(lock_path(store.path))
    if holder is not None:
        stale = _stale(lock_path(store.path), holder)
        state = "stale: its process is gone" if stale else "a writer is running"
        report.notes.append(f"writer lock {lock_path(store.path)} present ({state}); files it is "
                            "staging show as orphans until it commits")
    if store.format_version < 2:
        report.notes.append(f"unchecksummed (format {store.format_version}): chunks carry no checksums, so "
                            "damage that still decodes to plausible numbers cannot be detected; a store "
                            "written again by `scfm prepare` from its sources is format 2")
    return report


_MAX_LISTED = 20  # damaged chunks listed per shard


def _arrays(group, prefix: str = ""):
    """``(path inside the group, array)`` of every array below ``group``."""
    for name, array in sorted(group.arrays()):
        yield f"{prefix}{name}", array
    for name, sub in sorted(group.groups()):
        yield from _arrays(sub, f"{prefix}{name}/")


def _check_chunk_files(readers: list[SliceReader], where: str, report: VerifyReport) -> bool:
    """Verify every chunk's checksum; True when all are sound."""
    damaged = []
    for reader in readers:
        if not reader.checksum:
            if report.format_version >= 2:
                damaged.append(f"{where}: array {reader.name} has no chunk checksums in a format 2 store")
            continue
        for j in range(reader.n_chunks):
            try:
                reader.check_chunk(j)
                report.n_chunks += 1
            except ScFmError as err:
                damaged.append(err.what)
    report.problems += damaged[:_MAX_LISTED]
    if len(damaged) > _MAX_LISTED:
        report.problems.append(f"{where}: {len(damaged) - _MAX_LISTED} more damaged chunks")
    return not damaged


def _check_chunks(store: CorpusStore, k: int, report: VerifyReport) -> bool:
    """The checksums of every chunk of shard ``k`` (format 2); True when the rows can be checked."""
    info = store.shards[k]
    if not (store.path / "shards" / info.name / "zarr.json").is_file():
        return True  # _check_shard reports it
    readers = [SliceReader(array, store.path, info.name, name) for name, array in _arrays(store.shard(k))]
    return _check_chunk_files(readers, f"shard {info.name}", report)


def _check_vocab(store: CorpusStore, report: VerifyReport) -> None:
    try:
        vocab = store.vocab
    except Exception as err:
        report.problems.append(f"vocab.tsv cannot be read ({type(err).__name__}: {err})")
        return
    if vocab.hash != store.vocab_hash or vocab.n_genes != store.n_genes:
        report.problems.append(f"vocab.tsv (hash {vocab.hash}, {vocab.n_genes} genes) differs from zarr.json "
                               f"(hash {store.vocab_hash}, {store.n_genes} genes)")


def shard_size_problem(store: CorpusStore, k: int) -> str | None:
    """Whether shard ``k``'s own record and array lengths disagree with what zarr.json lists
    (metadata only: cheap enough for every run to check before it trains)."""
    info = store.shards[k]
    group = store.shard(k)
    attrs = dict(group.attrs)
    if (attrs.get("n_cells"), attrs.get("nnz")) != (info.n_cells, info.nnz):
        return (f"holds n_cells={attrs.get('n_cells')}, nnz={attrs.get('nnz')}; "
                f"zarr.json lists {info.n_cells}, {info.nnz}")
    shapes = {name: group[name].shape[0] for name in ("indptr", "indices", "data")}
    if shapes != {"indptr": info.n_cells + 1, "indices": info.nnz, "data": info.nnz}:
        return f"array lengths {shapes} do not fit {info.n_cells} cells, {info.nnz} nonzeros"
    return None


def _check_shard(store: CorpusStore, k: int, report: VerifyReport) -> None:
    info = store.shards[k]
    where = f"shard {info.name}"
    if not (store.path / "shards" / info.name / "zarr.json").is_file():
        report.problems.append(f"{where}: listed in zarr.json but missing")
        return
    problem = shard_size_problem(store, k)
    if problem:
        report.problems.append(f"{where}: {problem}")
        return
    group = store.shard(k)
    previous_end = 0
    for start in range(0, info.n_cells, _BLOCK_CELLS):
        stop = min(start + _BLOCK_CELLS, info.n_cells)
        indptr = store._slices(k, "indptr")(start, stop + 1)
        if indptr[0] != previous_end or np.any(np.diff(indptr) < 0) or indptr[-1] > info.nnz:
            report.problems.append(f"{where}: row pointer is not monotone within [0, {info.nnz}] "
                                   f"(rows {start}-{stop})")
            return
        previous_end = int(indptr[-1])
        _, indices, data = store.read_rows(k, start, stop)
        if len(indices) and (indices.min() < 0 or indices.max() >= store.n_genes):
            report.problems.append(f"{where}: gene index outside the vocabulary (rows {start}-{stop})")
            return
        rows = np.repeat(np.arange(stop - start), np.diff(indptr))
        if len(indices) > 1 and np.any((np.diff(indices) <= 0) & (np.diff(rows) == 0)):
            report.problems.append(f"{where}: gene indices not sorted and unique within a cell "
                                   f"(rows {start}-{stop})")
            return
        if len(data) and (not np.all(np.isfinite(data)) or data.min() < 0):
            report.problems.append(f"{where}: non-finite or negative values (rows {start}-{stop})")
            return
    if previous_end != info.nnz:
        report.problems.append(f"{where}: row pointer ends at {previous_end}, not nnz={info.nnz}")
    for kind in ("obs", "obs_num"):
        for col in group[kind].array_keys() if kind in group else []:
            if group[kind][col].shape[0] != info.n_cells:
                report.problems.append(f"{where}: {kind}/{col} has {group[kind][col].shape[0]} values for "
                                       f"{info.n_cells} cells")


def _check_stats(store: CorpusStore, report: VerifyReport) -> None:
    prefix = f"stats/v{store.stats_version}"
    if prefix in store.root:
        readers = [SliceReader(array, store.path, None, f"{prefix}/{name}")
                   for name, array in _arrays(store.root[prefix])]
        if not _check_chunk_files(readers, "statistics", report):
            return
    for group in store.stats_groups:
        try:
            stats = store.stats(group)
        except Exception as err:
            report.problems.append(f"statistics {group!r} cannot be read ({getattr(err, 'message', err)})")
            continue
        for value, gene_stats in stats.items():
            bad = [f for f in STATS_FIELDS[:5] if getattr(gene_stats, f).shape[0] != store.n_genes]
            if bad:
                report.problems.append(f"statistics {group}/{value}: {bad} do not have {store.n_genes} genes")
        if group == GLOBAL_GROUP:
            total = sum(s.n_cells for s in stats.values())
            if total != store.n_cells:
                report.problems.append(f"global statistics count {total} cells, the store holds "
                                       f"{store.n_cells}")
    if GLOBAL_GROUP not in store.stats_groups:
        report.problems.append("no global statistics")


def _check_manifest(store: CorpusStore, report: VerifyReport) -> None:
    path = store.path / f"manifest-v{store.stats_version}.json"
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        report.problems.append(f"{path.name} cannot be read ({type(err).__name__}: {err})")
        return
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        report.problems.append(f"{path.name} is not a list of source rows")
        return
    named = [name for row in rows for name in row.get("shards", [])]
    listed = {s.name for s in store.shards}
    if set(named) != listed:
        missing, extra = sorted(listed - set(named)), sorted(set(named) - listed)
        report.problems.append(f"{path.name} and zarr.json list different shards (only in zarr.json: "
                               f"{missing[:3]}, only in the manifest: {extra[:3]})")
    kept = sum(int(row.get("cells_kept", 0)) for row in rows)
    if kept != store.n_cells:
        report.problems.append(f"{path.name} records {kept} cells kept, the store holds {store.n_cells}")


def find_orphans(store: CorpusStore) -> list[Path]:
    listed = {s.name for s in store.shards}
    version = store.stats_version
    orphans = [p for p in sorted((store.path / "shards").iterdir()) if p.name not in listed
               and p.name != "zarr.json"] if (store.path / "shards").is_dir() else []
    stats = store.path / "stats"
    if stats.is_dir():
        orphans += [p for p in sorted(stats.iterdir())
                    if re.fullmatch(r"v\d+", p.name) and p.name != f"v{version}"]
    orphans += [p for p in sorted(store.path.glob("manifest-v*.json"))
                if p.name != f"manifest-v{version}.json"]
    orphans += sorted(store.path.glob("*.tmp-*"))
    orphans += sorted(store.path.parent.glob(f"{store.path.name}.partial-*"))
    return orphans


def repair_store(path: str | Path, lock_timeout: float | None = None) -> list[Path]:
    """Remove the orphans of ``path`` under its writer lock; returns what was removed."""
    with StoreLock(path, lock_timeout):
        removed = find_orphans(CorpusStore(path))
        for orphan in removed:
            if orphan.is_dir() and not orphan.is_symlink():
                shutil.rmtree(orphan)
            else:
                orphan.unlink(missing_ok=True)
    return removed
