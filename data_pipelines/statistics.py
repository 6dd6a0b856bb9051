"""Per-gene statistics of one source, grouped as ``prepare.stats_groups`` asks, and their merge.

A group column that is constant over a source (its dataset, assay...) shares the source's
total accumulator instead of accumulating the same cells twice; columns that vary per cell
(a carried ``batch``) get one accumulator per value. Cells with no value are left out of
that group (they stay in ``global``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sc_fm.stats import GeneStatsAccumulator
from sc_fm.store import GLOBAL_GROUP

Grouped = dict[str, dict[str, GeneStatsAccumulator]]


class SourceStatistics:
    """Streaming statistics of one source: the global total plus each grouping."""

    def __init__(self, n_genes: int, groups: list[str], constant: dict[str, str | None]):
        self.n_genes = n_genes
        self.groups = list(groups)
        self.constant = constant
        self.total = GeneStatsAccumulator(n_genes)
        self.varying: Grouped = {g: {} for g in groups if g not in constant}

    def update(self, matrix: sp.csr_matrix, obs: dict[str, np.ndarray]) -> None:
        """Add kept cells (vocabulary space, raw counts) with their per-cell metadata."""
        self.total.update(matrix.indptr, matrix.indices, matrix.data)
        for group, accumulators in self.varying.items():
            values = obs.get(group)
            if values is None:
                continue
            for value in sorted({v for v in values if v is not None}):
                rows = matrix[values == value]
                acc = accumulators.setdefault(value, GeneStatsAccumulator(self.n_genes))
                acc.update(rows.indptr, rows.indices, rows.data)

    def grouped(self) -> Grouped:
        out: Grouped = {GLOBAL_GROUP: {"all": self.total}}
        for group in self.groups:
            if group in self.constant:
                value = self.constant[group]
                out[group] = {value: self.total} if value is not None else {}
            else:
                out[group] = self.varying[group]
        return out


def merge_grouped(into: Grouped, part: Grouped, n_genes: int) -> None:
    """Add a source's grouped statistics to the store's running totals (never mutating ``part``)."""
    for group, by_value in part.items():
        target = into.setdefault(group, {})
        for value, acc in by_value.items():
            if value not in target:
                target[value] = GeneStatsAccumulator(n_genes)
            target[value].merge(acc)
