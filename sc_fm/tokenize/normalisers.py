"""Per-gene normalisers: the nonzero median of depth-normalised expression, by group.

Dividing a gene's normalised value by its median (Geneformer's rank-value idea) makes
ranks compare genes on their own scale. Taking the median per dataset or assay instead of
corpus-wide cancels a gene's group-specific capture factor: if one assay captures a gene
3x more, its median there is 3x larger too. A group's median is trusted for a gene seen in
at least ``min_group_cells`` of the group's cells; otherwise the global median is used, and
a gene never expressed anywhere gets 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from sc_fm.stats import GeneStats, GeneStatsAccumulator
from sc_fm.store import GLOBAL_GROUP, CorpusStore

GLOBAL_VALUE = "all"
NO_NORMALISERS = "none"


def is_group_normalised(stats_group: str) -> bool:
    """Whether ``tokenizer.stats_group`` names a per-group table (not ``global`` or ``none``)."""
    return stats_group not in (GLOBAL_GROUP, NO_NORMALISERS)


def global_medians(stats: GeneStats) -> np.ndarray:
    """Corpus-wide nonzero medians; a gene never expressed anywhere gets 1."""
    return np.nan_to_num(stats.nonzero_median, nan=1.0).astype(np.float32)


def trusted_medians(stats: GeneStats, fallback: np.ndarray, min_group_cells: int) -> np.ndarray:
    """A group's nonzero medians where it saw the gene in ``min_group_cells`` cells, else ``fallback``."""
    trusted = (stats.n_expr >= min_group_cells) & np.isfinite(stats.nonzero_median)
    return np.where(trusted, stats.nonzero_median, fallback).astype(np.float32)


def medians_by_group(blocks: Iterable[tuple[sp.csr_matrix, np.ndarray]], n_genes: int, fallback: np.ndarray,
                     min_group_cells: int) -> dict[str, np.ndarray]:
    """Normalisers of new cells' own groups: ``blocks`` yields (count rows in vocabulary space,
    each row's group value); one pass, one accumulator per group value."""
    accumulators: dict[str, GeneStatsAccumulator] = {}
    for rows, groups in blocks:
        for value in np.unique(groups):
            part = rows[groups == value]
            acc = accumulators.setdefault(str(value), GeneStatsAccumulator(n_genes))
            acc.update(part.indptr, part.indices, part.data)
    return {value: trusted_medians(acc.finish(), fallback, min_group_cells)
            for value, acc in sorted(accumulators.items())}


def merged_stats(stores: Sequence[CorpusStore], group: str) -> dict[str, GeneStats]:
    """Statistics of ``group`` per value, merged over all stores (histograms add)."""
    by_value: dict[str, GeneStatsAccumulator] = {}
    for store in stores:
        for value, stats in store.stats(group).items():
            acc = GeneStatsAccumulator.from_stats(stats)
            if value in by_value:
                by_value[value].merge(acc)
            else:
                by_value[value] = acc
    return {value: acc.finish() for value, acc in by_value.items()}


class KeptStatistics(Protocol):
    """Statistics of the cells that train (see ``sc_fm.data.kept.KeptCells``)."""

    global_stats: GeneStats
    group_stats: dict[str, GeneStats]
    categories: dict[str, list[str]]


def build_normalisers(stores: Sequence[CorpusStore], group: str,
                      min_group_cells: int) -> dict[str, dict[str, np.ndarray]]:
    """``{"global": {"all": m}, group: {value: m_value}}`` float32 ``[n_genes]``, gaps filled."""
    by_value = merged_stats(stores, group) if is_group_normalised(group) else {}
    return normalisers_from_stats(merged_stats(stores, GLOBAL_GROUP)[GLOBAL_VALUE], by_value, group,
                                  min_group_cells)


def normalisers_from_stats(global_stats: GeneStats, group_stats: dict[str, GeneStats], group: str,
                           min_group_cells: int) -> dict[str, dict[str, np.ndarray]]:
    """The normaliser table of ``build_normalisers`` from statistics already merged."""
    global_median = global_medians(global_stats)
    out = {GLOBAL_GROUP: {GLOBAL_VALUE: global_median}}
    if not is_group_normalised(group):
        return out
    out[group] = {value: trusted_medians(stats, global_median, min_group_cells)
                  for value, stats in sorted(group_stats.items())}
    return out


def save_normalisers(normalisers: dict[str, dict[str, np.ndarray]], path) -> dict[str, list[str]]:
    """Write arrays to ``path`` (npz); return the index ``{group: [values]}`` for the JSON side."""
    index = {group: sorted(values) for group, values in normalisers.items()}
    arrays = {f"{group}/{i}": normalisers[group][value]
              for group, values in index.items() for i, value in enumerate(values)}
    np.savez(path, **arrays)
    return index


def load_normalisers(path, index: dict[str, list[str]]) -> dict[str, dict[str, np.ndarray]]:
    with np.load(path) as arrays:
        return {group: {value: arrays[f"{group}/{i}"] for i, value in enumerate(values)}
                for group, values in index.items()}
