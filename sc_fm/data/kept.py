"""What the training cells are once ``data.include``/``data.exclude`` have removed some:
gene statistics and metadata values computed over the kept cells alone.

A store's own statistics and categories cover every cell it holds. When a filter holds cells
out (evaluation datasets, donors), the tokenizer must not learn their gene medians or their
condition categories, so they are recomputed here in one pass over the kept cells' rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from sc_fm.config import DataConfig
from sc_fm.data.filters import CellFilter
from sc_fm.stats import GeneStats, GeneStatsAccumulator
from sc_fm.store import CorpusStore

READ_CELLS = 4096  # rows read at once


@dataclass
class KeptCells:
    """``global_stats`` over all kept cells, ``group_stats[value]`` per value of ``group``,
    ``categories[column]``: the values of each requested column among the kept cells."""

    global_stats: GeneStats
    group_stats: dict[str, GeneStats]
    categories: dict[str, list[str]]


def kept_cells(stores: Sequence[CorpusStore], config: DataConfig, group: str | None,
               columns: Sequence[str]) -> KeptCells | None:
    """The kept cells' statistics, or None when no filter is set (the stores' own then hold)."""
    cell_filter = CellFilter(config.include, config.exclude)
    if not cell_filter.active:
        return None
    cell_filter.check(stores)
    n_genes = stores[0].vocab.n_genes
    everything = GeneStatsAccumulator(n_genes)
    by_value: dict[str, GeneStatsAccumulator] = {}
    found: dict[str, set[str]] = {column: set() for column in columns}
    for block in kept_blocks(stores, cell_filter, every_block(stores)):
        for column in found:
            found[column].update(block.values(column))
        everything.update(block.indptr, block.indices, block.data)
        if group is None:
            continue
        values = block.values(group).astype(str)
        for value in np.unique(values):
            picked = np.flatnonzero(values == value)
            acc = by_value.setdefault(value, GeneStatsAccumulator(n_genes))
            acc.update(*take_rows(block.indptr, block.indices, block.data, picked))
    categories = {column: sorted(v for v in values if v is not None) for column, values in found.items()}
    return KeptCells(everything.finish(), {v: acc.finish() for v, acc in sorted(by_value.items())}, categories)


@dataclass
class KeptBlock:
    """The kept rows of rows ``[start, stop)`` of shard ``k``: CSR arrays, and ``rows`` (their
    positions in the block; None: every row)."""

    store: CorpusStore
    k: int
    start: int
    stop: int
    rows: np.ndarray | None
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray

    def values(self, column: str) -> np.ndarray:
        """``column``'s category strings of the kept rows (None: missing)."""
        values = column_values(self.store, self.k, column, self.start, self.stop)
        return values if self.rows is None else values[self.rows]


def every_block(stores: Sequence[CorpusStore]) -> list[tuple[int, int, int]]:
    """``(store, shard, start)`` of every block of ``READ_CELLS`` rows, in store order."""
    return [(s, k, start) for s, store in enumerate(stores) for k, info in enumerate(store.shards)
            for start in range(0, info.n_cells, READ_CELLS)]


def kept_blocks(stores: Sequence[CorpusStore], cell_filter: CellFilter,
                blocks: Iterable[tuple[int, int, int]]) -> Iterator[KeptBlock]:
    """The rows of ``blocks`` that ``cell_filter`` keeps (all, when it is inactive); a block that
    keeps nothing is skipped without reading its rows."""
    for s, k, start in blocks:
        store = stores[s]
        stop = min(start + READ_CELLS, store.shards[k].n_cells)
        rows = np.flatnonzero(cell_filter.keep(store, k, start, stop)) if cell_filter.active else None
        if rows is not None and not len(rows):
            continue
        indptr, indices, data = store.read_rows(k, start, stop)
        if rows is not None:
            indptr, indices, data = take_rows(indptr, indices, data, rows)
        yield KeptBlock(store, k, start, stop, rows, indptr, indices, data)


def column_values(store: CorpusStore, k: int, column: str, start: int, stop: int) -> np.ndarray:
    """Category strings of ``column`` over rows ``[start, stop)`` of shard ``k`` (None: missing)."""
    found = store.shard_obs(k, column, start, stop)
    if found is None:
        return np.full(stop - start, None, dtype=object)
    codes, categories = found
    return np.asarray(list(categories) + [None], dtype=object)[codes]


def take_rows(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
               rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CSR rows ``rows`` of a block, as their own CSR arrays."""
    n_cols = int(indices.max(initial=-1)) + 1
    part = sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, n_cols))[rows]
    return part.indptr, part.indices, part.data
