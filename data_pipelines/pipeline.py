"""``prepare``: sources in, one complete corpus store out (or nothing at all).

Work is split into tasks: one per source, and a source that streams from disk (h5ad CSR or
dense, 10x HDF5) larger than ``prepare.shard_cells`` is cut into the fewest equal row ranges
of at most ``shard_cells`` rows, one task (and one shard) each, so a single large atlas also
uses every worker. ``prepare.workers`` processes run the tasks,
each writing its own shards into the staging store, while the parent hashes the source
files; the parent then merges statistics in task order (so any number of workers gives the
same store) and commits. Any error aborts the writer, which removes every staged
file: a new store never appears half-written and an appended store keeps its old state.
"""

from __future__ import annotations

import multiprocessing
import time
from contextlib import ExitStack, closing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from data_pipelines.ingest import SourceResult, SourceTask, ingest_source, source_manifest
from data_pipelines.readers import open_reader
from data_pipelines.report import drops_text, non_counts_note, sources_table
from data_pipelines.sources import (SourceSpec, duplicate_checksums, duplicate_paths, expand_sources,
                                   source_checksum)
from data_pipelines.statistics import Grouped, merge_grouped
from data_pipelines.vocabulary import resolve_vocab
from sc_fm.config import PrepareConfig
from sc_fm.errors import ConfigError, InputDataError
from sc_fm.stats import GeneStatsAccumulator
from sc_fm.store import GLOBAL_GROUP, CorpusStore, StoreWriter
from sc_fm.store.location import is_url
from sc_fm.store.publish import write_remote
from sc_fm.vocab import GeneVocab

STREAMING_SUFFIXES = (".h5ad", ".h5")


@dataclass
class PrepareSummary:
    """The written store and one manifest row per source ingested by this call."""

    store: CorpusStore
    sources: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def cells_read(self) -> int:
        return sum(row["cells_read"] for row in self.sources)

    @property
    def cells_kept(self) -> int:
        return sum(row["cells_kept"] for row in self.sources)

    def table(self) -> str:
        """The per-source summary table printed at the end of ``scfm prepare``."""
        rate = self.cells_read / max(self.seconds, 1e-9)
        note = non_counts_note(self.sources)
        return (f"{sources_table(self.sources)}\n" + (f"note: {note}\n" if note else "")
                + f"{self.cells_kept:,} of {self.cells_read:,} cells kept in {self.seconds:.1f} s "
                f"({rate:,.0f} cells/s) -> {self.store.path} "
                f"({self.store.n_cells:,} cells, {len(self.store.shards)} shards)")


def soma_content_id(spec: SourceSpec) -> str:
    """The manifest's content identifier of a SOMA source (its stand-in for a file checksum)."""
    reader = open_reader(spec)
    try:
        return reader.content_id
    finally:
        reader.close()


def check_prepare_config(cfg: PrepareConfig) -> None:
    """Range checks the types cannot express."""
    for key in ("shard_cells", "chunk_cells", "read_block_cells", "read_block_nnz", "workers"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"prepare.{key}={getattr(cfg, key)} must be at least 1", "config")
    if not 0.0 <= cfg.min_gene_overlap <= 1.0:
        raise ConfigError(f"prepare.min_gene_overlap={cfg.min_gene_overlap} must be in [0, 1]", "config")
    if GLOBAL_GROUP in cfg.stats_groups:
        raise ConfigError(f"prepare.stats_groups lists {GLOBAL_GROUP!r}, which is always computed", "config",
                          "list only metadata columns, e.g. [dataset, assay]")


def _run_tasks(tasks: list[SourceTask], workers: int) -> Iterator[SourceResult]:
    """Results in task order, each as soon as it and those before it are done."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(ingest_source, tasks)
        return
    # forked from a fresh server process that has imported the ingestion code once: no locks or
    # threads inherited from the caller (as with spawn), without each worker importing again
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["data_pipelines.ingest", "sc_fm.kernels"])
    else:  # Windows
        context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context)
    finished = False
    try:
        yield from executor.map(ingest_source, tasks)
        finished = True
    finally:
        if not finished:  # an error, Ctrl-C or SIGTERM: stop the workers before the writer cleans up
            for process in list(getattr(executor, "_processes", {}).values()):
                process.terminate()
        executor.shutdown(wait=True, cancel_futures=True)


def _row_ranges(spec: SourceSpec, vocab: GeneVocab, part_cells: int) -> list[tuple[int, int] | None]:
    """Row ranges of a source to ingest as separate tasks (``[None]``: the source whole)."""
    if spec.path is None or Path(spec.path).suffix.lower() not in STREAMING_SUFFIXES:
        return [None]
    reader = open_reader(spec, vocab)
    try:
        n, streams = reader.n_cells, reader.streams
    finally:
        reader.close()
    if not streams or n <= part_cells:
        return [None]
    size = -(-n // -(-n // part_cells))  # equal parts of at most part_cells: workers finish together
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def prepare(sources: list[SourceSpec | str | Path], output: str | Path, config: PrepareConfig,
            append: bool = False, progress: bool = True, lock_timeout: float | None = None) -> PrepareSummary:
    """Ingest ``sources`` into a new corpus store at ``output`` (or append to it).

    The store's writer lock is held from start to commit; another writer waits up to
    ``lock_timeout`` seconds for it (default ``SCFM_LOCK_TIMEOUT`` or 60 s), then is refused.
    ``output`` may be an fsspec URL (``s3://bucket/corpus.zarr``): the store is then written in a
    local staging folder and published there, visible only when complete.
    """
    if is_url(output):  # written locally, then published (sc_fm.store.publish)
        summary = write_remote(str(output), append, lock_timeout, lambda local: prepare(
            sources, local, config, append, progress, lock_timeout), progress)
        summary.store = CorpusStore(output)
        return summary
    began = time.perf_counter()
    check_prepare_config(config)
    specs = expand_sources(list(sources))
    duplicate_paths(specs, config.allow_duplicate_sources)
    output = Path(output)
    vocab = resolve_vocab(config.vocab, specs, output if append else None)
    writer = StoreWriter(output, vocab, append=append, codec=config.codec, chunk_cells=config.chunk_cells,
                         lock_timeout=lock_timeout)
    with writer, ThreadPoolExecutor(max_workers=1) as hasher, ExitStack() as stack:
        totals: Grouped = writer.existing_stats()
        groups = [g for g in totals if g != GLOBAL_GROUP] if writer.old else list(config.stats_groups)
        tasks = []
        for i, spec in enumerate(specs):
            for rows in _row_ranges(spec, vocab, config.shard_cells):
                position = len(tasks) % config.workers if config.workers > 1 else None
                tasks.append(SourceTask(i, spec, writer.stage_dir, writer.shard_prefix(len(tasks)), vocab,
                                        config, groups, rows, progress, position, writer.checksum))
        checksums = [hasher.submit(source_checksum, Path(s.path)) if s.path is not None else
                     hasher.submit(soma_content_id, s) if s.soma is not None else None for s in specs]
        totals.setdefault(GLOBAL_GROUP, {"all": GeneStatsAccumulator(vocab.n_genes)})
        parts: list[list[SourceResult]] = [[] for _ in specs]
        results = stack.enter_context(closing(_run_tasks(tasks, config.workers)))  # closed before abort
        for task, result in zip(tasks, results):
            for name, n_cells, nnz in result.shards:
                writer.register_shard(name, n_cells, nnz, task.spec.dataset)
            merge_grouped(totals, result.stats, vocab.n_genes)
            result.stats = {}  # merged: a task's statistics are large, keep only the running totals
            parts[task.index].append(result)
        rows = [source_manifest(spec, parts[i], checksums[i].result() if checksums[i] else None)
                for i, spec in enumerate(specs)]
        duplicate_checksums(rows, writer.old.manifest if writer.old else [], config.allow_duplicate_sources,
                            str(output))
        if not writer.old and not any(r["cells_kept"] for r in rows):
            drops = "; ".join(f"{r['dataset']}: {drops_text(r['drops'])}" for r in rows)
            raise InputDataError(f"no cell passed QC (dropped: {drops})", str(output),
                                 "check the inputs hold raw counts, or relax prepare.qc (min_genes, "
                                 "min_counts, max_mito_fraction)")
        writer.commit(totals, rows)
    return PrepareSummary(CorpusStore(output), rows, time.perf_counter() - began)
