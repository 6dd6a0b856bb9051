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
NONZERO_MEDIAN = "nonzero_median"


def is_group_normalised(stats_group: str) -> bool:
    """Whether ``tokenizer.stats_group`` names a per-group table (not ``global`` or ``none``)."""
    return stats_group not in (GLOBAL_GROUP, NO_NORMALISERS)


def gene_scales(stats: GeneStats, kind: str = NONZERO_MEDIAN) -> np.ndarray:
    """Each gene's scale in depth-normalised units (NaN where never expressed): its nonzero
    median, or (``mean``) its mean over all cells, zeros included, which also divides by how
    many cells express it, so that a gene specific to few cells ranks high where it is found."""
    if kind == NONZERO_MEDIAN:
        return stats.nonzero_median
    mean = stats.sum_norm / max(stats.n_cells, 1)
    return np.where(stats.n_expr > 0, mean, np.nan)


def global_medians(stats: GeneStats, kind: str = NONZERO_MEDIAN) -> np.ndarray:
    """Corpus-wide gene scales (``gene_scales``); a gene never expressed anywhere gets 1."""
    return np.nan_to_num(gene_scales(stats, kind), nan=1.0).astype(np.float32)


def trusted_medians(stats: GeneStats, fallback: np.ndarray, min_group_cells: int,
                    kind: str = NONZERO_MEDIAN) -> np.ndarray:
    """A group's gene scales where it saw the gene in ``min_group_cells`` cells, else ``fallback``."""
    scales = gene_scales(stats, kind)
    trusted = (stats.n_expr >= min_group_cells) & np.isfinite(scales)
    return np.where(trusted, scales, fallback).astype(np.float32)


def medians_by_group(blocks: Iterable[tuple[sp.csr_matrix, np.ndarray]], n_genes: int, fallback: np.ndarray,
                     min_group_cells: int, kind: str = NONZERO_MEDIAN) -> dict[str, np.ndarray]:
    """Normalisers of new cells' own groups: ``blocks`` yields (count rows in vocabulary space,
    each row's group value); one pass, one accumulator per group value."""
    accumulators: dict[str, GeneStatsAccumulator] = {}
    for rows, groups in blocks:
        for value in np.unique(groups):
            part = rows[groups == value]
            acc = accumulators.setdefault(str(value), GeneStatsAccumulator(n_genes))
            acc.update(part.indptr, part.indices, part.data)
    return {value: trusted_medians(acc.finish(), fallback, min_group_cells, kind)
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


def build_normalisers(stores: Sequence[CorpusStore], group: str, min_group_cells: int,
                      kind: str = NONZERO_MEDIAN) -> dict[str, dict[str, np.ndarray]]:
    """``{"global": {"all": m}, group: {value: m_value}}`` float32 ``[n_genes]``, gaps filled."""
    by_value = merged_stats(stores, group) if is_group_normalised(group) else {}
    return normalisers_from_stats(merged_stats(stores, GLOBAL_GROUP)[GLOBAL_VALUE], by_value, group,
                                  min_group_cells, kind)


def normalisers_from_stats(global_stats: GeneStats, group_stats: dict[str, GeneStats], group: str,
                           min_group_cells: int, kind: str = NONZERO_MEDIAN) -> dict[str, dict[str, np.ndarray]]:
    """The normaliser table of ``build_normalisers`` from statistics already merged."""
    global_median = global_medians(global_stats, kind)
    out = {GLOBAL_GROUP: {GLOBAL_VALUE: global_median}}
    if not is_group_normalised(group):
        return out
    out[group] = {value: trusted_medians(stats, global_median, min_group_cells, kind)
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
