"""Per-gene normalisers: the nonzero median of depth-normalised expression, by group.

Dividing a gene's normalised value by its median (Geneformer's rank-value idea) makes
ranks compare genes on their own scale. Taking the median per dataset or assay instead of
corpus-wide cancels a gene's group-specific capture factor: if one assay captures a gene
3x more, its median there is 3x larger too. A group's median is trusted for a gene seen in
at least ``min_group_cells`` of the group's cells; otherwise the global median is used, and
a gene never expressed anywhere gets 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sc_fm.stats import GeneStats, GeneStatsAccumulator
from sc_fm.store import GLOBAL_GROUP, CorpusStore

GLOBAL_VALUE = "all"


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


def build_normalisers(stores: Sequence[CorpusStore], group: str,
                      min_group_cells: int) -> dict[str, dict[str, np.ndarray]]:
    """``{"global": {"all": m}, group: {value: m_value}}`` float32 ``[n_genes]``, gaps filled."""
    global_stats = merged_stats(stores, GLOBAL_GROUP)[GLOBAL_VALUE]
    global_median = np.nan_to_num(global_stats.nonzero_median, nan=1.0)
    out = {GLOBAL_GROUP: {GLOBAL_VALUE: global_median.astype(np.float32)}}
    if group in (GLOBAL_GROUP, "none"):
        return out
    out[group] = {}
    for value, stats in sorted(merged_stats(stores, group).items()):
        trusted = (stats.n_expr >= min_group_cells) & np.isfinite(stats.nonzero_median)
        out[group][value] = np.where(trusted, stats.nonzero_median, global_median).astype(np.float32)
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
