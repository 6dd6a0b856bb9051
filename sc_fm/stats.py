"""Per-gene corpus statistics, accumulated in one streaming pass and mergeable across appends.

For each gene: cells expressing it, sum of raw counts, sum and sum of squares of the
depth-normalised value (counts / cell total * ``TARGET_SUM``), and the median of its nonzero
normalised values. The median is a documented sketch: a histogram of ``log1p(normalised)``
over ``N_HIST_BINS`` equal bins on ``[0, HIST_MAX)`` (width 0.0625, i.e. ~6% relative
resolution), interpolated linearly inside the median's bin. Histograms add, so statistics of
an appended source merge with the old ones without rereading old shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TARGET_SUM = 1e4
N_HIST_BINS = 160
HIST_MAX = 10.0  # log1p(1e4) = 9.21: a gene can't exceed the cell total
_BIN_WIDTH = HIST_MAX / N_HIST_BINS


def depth_normalise(indptr: np.ndarray, data: np.ndarray, target_sum: float = TARGET_SUM) -> np.ndarray:
    """Scale each CSR row to ``target_sum`` total; empty rows stay empty."""
    totals = np.add.reduceat(data.astype(np.float64), indptr[:-1]) if data.size else np.zeros(0)
    lengths = np.diff(indptr)
    totals = np.where(lengths > 0, totals[: len(lengths)] if totals.size else 0.0, 1.0)
    scale = np.repeat(target_sum / np.maximum(totals, 1e-12), lengths)
    return data.astype(np.float64) * scale


@dataclass
class GeneStats:
    """Finished statistics of one group of cells (e.g. one dataset), indexed by vocabulary gene."""

    n_cells: int
    n_expr: np.ndarray
    sum_counts: np.ndarray
    sum_norm: np.ndarray
    sumsq_norm: np.ndarray
    nonzero_median: np.ndarray
    hist: np.ndarray

    def mean_norm(self) -> np.ndarray:
        return self.sum_norm / max(self.n_cells, 1)


class GeneStatsAccumulator:
    """Streaming accumulator; ``update`` with CSR blocks in vocabulary space, ``merge``, ``finish``."""

    def __init__(self, n_genes: int):
        self.n_genes = n_genes
        self.n_cells = 0
        self.n_expr = np.zeros(n_genes, dtype=np.int64)
        self.sum_counts = np.zeros(n_genes, dtype=np.float64)
        self.sum_norm = np.zeros(n_genes, dtype=np.float64)
        self.sumsq_norm = np.zeros(n_genes, dtype=np.float64)
        self.hist = np.zeros((n_genes, N_HIST_BINS), dtype=np.int64)

    def update(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray) -> None:
        """Add a CSR block of raw counts (rows = cells, ``indices`` = vocabulary gene index)."""
        self.n_cells += len(indptr) - 1
        nz = data != 0
        idx = indices[nz]
        raw = data[nz].astype(np.float64)
        norm = depth_normalise(indptr, data)[nz]
        g = self.n_genes
        self.n_expr += np.bincount(idx, minlength=g)
        self.sum_counts += np.bincount(idx, weights=raw, minlength=g)
        self.sum_norm += np.bincount(idx, weights=norm, minlength=g)
        self.sumsq_norm += np.bincount(idx, weights=norm * norm, minlength=g)
        bins = np.minimum((np.log1p(norm) / _BIN_WIDTH).astype(np.int64), N_HIST_BINS - 1)
        flat = np.bincount(idx * N_HIST_BINS + bins, minlength=g * N_HIST_BINS)
        self.hist += flat.reshape(g, N_HIST_BINS)

    def merge(self, other: "GeneStatsAccumulator") -> None:
        self.n_cells += other.n_cells
        for name in ("n_expr", "sum_counts", "sum_norm", "sumsq_norm", "hist"):
            getattr(self, name).__iadd__(getattr(other, name))

    @classmethod
    def from_stats(cls, stats: GeneStats) -> "GeneStatsAccumulator":
        acc = cls(len(stats.n_expr))
        acc.n_cells = stats.n_cells
        acc.n_expr[:] = stats.n_expr
        acc.sum_counts[:] = stats.sum_counts
        acc.sum_norm[:] = stats.sum_norm
        acc.sumsq_norm[:] = stats.sumsq_norm
        acc.hist[:] = stats.hist
        return acc

    def finish(self) -> GeneStats:
        return GeneStats(self.n_cells, self.n_expr.copy(), self.sum_counts.copy(), self.sum_norm.copy(),
                         self.sumsq_norm.copy(), histogram_median(self.hist), self.hist.copy())


def histogram_median(hist: np.ndarray) -> np.ndarray:
    """Median of nonzero normalised values per gene from log1p histograms; NaN where never expressed."""
    totals = hist.sum(axis=1)
    cum = np.cumsum(hist, axis=1)
    half = totals / 2.0
    k = np.minimum((cum < half[:, None]).sum(axis=1), hist.shape[1] - 1)
    rows = np.arange(hist.shape[0])
    below = np.where(k > 0, cum[rows, np.maximum(k - 1, 0)], 0)
    in_bin = np.maximum(hist[rows, k], 1)
    log_median = (k + (half - below) / in_bin) * _BIN_WIDTH
    return np.where(totals > 0, np.expm1(log_median), np.nan)
