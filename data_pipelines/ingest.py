"""One source (or one row range of it) end to end: read -> QC -> map genes -> shards -> statistics.

``ingest_source`` is a pure function of its ``SourceTask`` that writes only its own shards
(named by the task's prefix) into the staging store, so tasks run in parallel processes and
give the same shards and statistics as a serial run. ``source_manifest`` joins the results
of a source's row ranges into its manifest row.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_pipelines.genes import map_genes, to_vocabulary
from data_pipelines.qc import COUNT_RULES, DROP_REASONS, cell_qc, first_non_integer, non_counts_error
from data_pipelines.readers import SourceReader, open_reader
from data_pipelines.sources import SourceSpec, cell_content, content_key
from data_pipelines.statistics import Grouped, SourceStatistics
from sc_fm.config import PrepareConfig
from sc_fm.errors import InputDataError
from sc_fm.store import ShardSequence
from sc_fm.vocab import GeneVocab

@dataclass
class SourceTask:
    """Everything a worker needs to ingest one source, or the row range ``rows`` of it."""

    index: int
    spec: SourceSpec
    stage_dir: Path
    shard_prefix: str
    vocab: GeneVocab
    config: PrepareConfig
    stats_groups: list[str]
    rows: tuple[int, int] | None = None  # None: every row
    progress: bool = True
    progress_position: int | None = None
    checksum: bool = True  # store format 2 (a crc32c per chunk); False appends to a format 1 store


@dataclass
class SourceResult:
    """What one task read, kept and wrote."""

    format: str
    cells_read: int
    cells_kept: int
    drops: dict[str, int]
    genes: dict  # the gene mapping report (same for every range of a source)
    shards: list[tuple[str, int, int]]  # (name, n_cells, nnz)
    stats: Grouped
    non_counts: bool = False  # values that are not whole numbers (allowed by prepare.allow_non_counts)
    content: int = 0  # cell_content of every cell read (before QC)


def source_constants(spec: SourceSpec) -> dict[str, str | None]:
    """Metadata every cell of the source shares (per-cell ``obs_columns`` take precedence)."""
    constants = {"dataset": spec.dataset, "assay": spec.assay, "species": spec.species}
    if spec.tissue is not None:
        constants["tissue"] = spec.tissue
    return {k: v for k, v in constants.items() if k not in spec.obs_columns}


def carried_columns(spec: SourceSpec, obs: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-cell strings of the ``obs_columns`` to carry (``None`` where missing)."""
    out = {}
    for store_col, source_col in spec.obs_columns.items():
        if source_col not in obs.columns:
            raise InputDataError(f"has no cell metadata column {source_col!r} (wanted as {store_col!r})",
                                 spec.label, f"use one of: {', '.join(map(str, obs.columns)) or '(none)'}")
        values = obs[source_col]
        out[store_col] = np.where(values.notna(), values.astype(str), None).astype(object)
    return out


def _progress_bar(task: SourceTask, total: int):
    from tqdm.auto import tqdm

    label = str(task.spec.dataset) + (f" [{task.rows[0]:,}-{task.rows[1]:,})" if task.rows else "")
    return tqdm(total=total, desc=label, unit="cells", unit_scale=True,
                disable=not task.progress, position=task.progress_position, leave=True)


def ingest_source(task: SourceTask) -> SourceResult:
    """Ingest one source into the staging store; raises ``InputDataError`` on bad input."""
    reader = open_reader(task.spec, task.vocab)
    try:
        return _ingest(task, reader)
    finally:
        reader.close()


def _ingest(task: SourceTask, reader: SourceReader) -> SourceResult:
    spec, cfg, vocab = task.spec, task.config, task.vocab
    mapping = map_genes(reader.genes, vocab, cfg.duplicate_genes, cfg.min_gene_overlap, spec.label)
    constants = source_constants(spec)
    carried = carried_columns(spec, reader.obs)
    barcodes = reader.obs.index.to_numpy()
    duplicated = reader.obs.index.duplicated(keep="first")
    shards = ShardSequence(task.stage_dir, task.shard_prefix, shard_cells=cfg.shard_cells,
                           codec=cfg.codec, chunk_cells=cfg.chunk_cells, checksum=task.checksum)
    stats = SourceStatistics(vocab.n_genes, task.stats_groups, constants)
    drops = dict.fromkeys(DROP_REASONS, 0)
    kept_total = content = 0
    non_counts = False
    first, end = task.rows or (0, reader.n_cells)
    # a block's shard writes and its statistics run in two threads while the next block is read
    # and checked (the compressors and the compiled statistics release the GIL); at most one
    # block waits, so memory stays bounded by two blocks
    pending: list[Future] = []
    with _progress_bar(task, end - first) as bar, ThreadPoolExecutor(2, "block-writer") as writer:
        for start, block in reader.blocks(cfg.read_block_cells, first, end, cfg.read_block_nnz):
            stop = start + block.shape[0]
            if not non_counts and (at := first_non_integer(block.data)) is not None:
                non_counts = True
                if not cfg.allow_non_counts:
                    cell = barcodes[start + np.searchsorted(block.indptr, at, side="right") - 1]
                    raise non_counts_error(spec.label, f"e.g. {block.data[at]:.6g} in cell {cell}")
            qc = cell_qc(block, mapping.mito, duplicated[start:stop], barcodes[start:stop], cfg.qc,
                         spec.label, counts=not non_counts)
            content += cell_content(barcodes[start:stop], qc.n_counts)
            for reason, n in qc.drops.items():
                drops[reason] += n
            kept = to_vocabulary(block if qc.keep.all() else block[qc.keep], mapping, vocab.n_genes)
            n_kept = kept.shape[0]
            obs = {col: np.full(n_kept, value, dtype=object) for col, value in constants.items()}
            obs.update({col: values[start:stop][qc.keep] for col, values in carried.items()})
            figures = {"n_counts": qc.n_counts, "n_genes": qc.n_genes, "mito_fraction": qc.mito_fraction}
            for done in pending:
                done.result()
            non_counts = _written_non_counts(shards, non_counts, cfg, spec)
            pending = [writer.submit(shards.append, kept, obs, {k: v[qc.keep] for k, v in figures.items()}),
                       writer.submit(stats.update, kept, obs)]
            kept_total += n_kept
            bar.update(block.shape[0])
        for done in pending:
            done.result()
    non_counts = _written_non_counts(shards, non_counts, cfg, spec)
    return SourceResult(reader.format, end - first, kept_total, drops, mapping.report(), shards.close(),
                        stats.grouped(), non_counts, content % 2**64)


def _written_non_counts(shards: ShardSequence, non_counts: bool, cfg: PrepareConfig,
                        spec: SourceSpec) -> bool:
    """Whether the source holds non-counts, now that the shard writer has checked every stored
    value (a non-integer past ``first_non_integer``'s sample shows here, a block later)."""
    if non_counts or shards.integral:
        return non_counts
    if not cfg.allow_non_counts:
        raise non_counts_error(spec.label, "found among the stored values")
    return True


def source_manifest(spec: SourceSpec, parts: list[SourceResult], checksum: str | None) -> dict:
    """The manifest row of a source from the results of its row ranges (in order)."""
    non_counts = any(p.non_counts for p in parts)
    return {
        "dataset": spec.dataset, "path": str(Path(spec.path).resolve()) if spec.path is not None else spec.soma,
        **({"measurement": spec.measurement, "filter": spec.filter} if spec.soma is not None else {}),
        "format": parts[0].format, "layer": spec.layer, "checksum": checksum,
        "content": content_key(sum(p.cells_read for p in parts), sum(p.content for p in parts)),
        "assay": spec.assay, "species": spec.species, "tissue": spec.tissue,
        "obs_columns": dict(spec.obs_columns),
        "cells_read": sum(p.cells_read for p in parts), "cells_kept": sum(p.cells_kept for p in parts),
        "drops": {reason: sum(p.drops[reason] for p in parts) for reason in DROP_REASONS},
        "values": "non-counts" if non_counts else "counts",
        **({"qc_skipped": list(COUNT_RULES)} if non_counts else {}),
        **parts[0].genes, "shards": [name for p in parts for name, _, _ in p.shards],
    }
