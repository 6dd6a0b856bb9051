"""What the training cells are once ``data.include``/``data.exclude`` have removed some:
gene statistics and metadata values computed over the kept cells alone.

A store's own statistics and categories cover every cell it holds. When a filter holds cells
out (evaluation datasets, donors), the tokenizer must not learn their gene medians or their
condition categories, so they are recomputed here in one pass over the kept cells' rows.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    for store in stores:
        for k, info in enumerate(store.shards):
            for start in range(0, info.n_cells, READ_CELLS):
                stop = min(start + READ_CELLS, info.n_cells)
                keep = cell_filter.keep(store, k, start, stop)
                if not keep.any():
                    continue
                for column in found:
                    found[column].update(column_values(store, k, column, start, stop)[keep])
                indptr, indices, data = store.read_rows(k, start, stop)
                rows = np.flatnonzero(keep)
                sub_indptr, sub_indices, sub_data = take_rows(indptr, indices, data, rows)
                everything.update(sub_indptr, sub_indices, sub_data)
                if group is None:
                    continue
                values = column_values(store, k, group, start, stop)[keep]
                for value in np.unique(values.astype(str)):
                    picked = np.flatnonzero(values.astype(str) == value)
                    acc = by_value.setdefault(value, GeneStatsAccumulator(n_genes))
                    acc.update(*take_rows(sub_indptr, sub_indices, sub_data, picked))
    categories = {column: sorted(v for v in values if v is not None) for column, values in found.items()}
    return KeptCells(everything.finish(), {v: acc.finish() for v, acc in sorted(by_value.items())}, categories)


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
