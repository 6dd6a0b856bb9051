"""Per-gene corpus statistics, accumulated in one streaming pass and mergeable across appends.

For each gene: cells expressing it, sum of raw counts, sum and sum of squares of the
depth-normalised value (counts / cell total * ``CP10K``), and the median of its nonzero
normalised values. The median is a documented sketch: a histogram of ``log1p(normalised)``
over ``N_HIST_BINS`` equal bins on ``[0, HIST_MAX)`` (width 0.0625, i.e. ~6% relative
resolution), interpolated linearly inside the median's bin. Histograms add, so statistics of
an appended source merge with the old ones without rereading old shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sc_fm.config import CP10K

N_HIST_BINS = 160
HIST_MAX = 10.0  # log1p(1e4) = 9.21: a gene can't exceed the cell total
_BIN_WIDTH = HIST_MAX / N_HIST_BINS


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


class GeneStatsAccumulator:
    """Streaming accumulator; ``update`` with CSR blocks in vocabulary space, ``merge``, ``finish``."""

    def __init__(self, n_genes: int):
        self.n_genes = n_genes
        self.n_cells = 0
        self.sum_counts = np.zeros(n_genes, dtype=np.float64)
        self.sum_norm = np.zeros(n_genes, dtype=np.float64)
        self.sumsq_norm = np.zeros(n_genes, dtype=np.float64)
        # int32 halves the largest array (genes x bins); a bin counts cells, so it cannot overflow
        self.hist = np.zeros((n_genes, N_HIST_BINS), dtype=np.int32)

    @property
    def n_expr(self) -> np.ndarray:
        """Cells expressing each gene: every nonzero lands in exactly one histogram bin."""
        return self.hist.sum(axis=1, dtype=np.int64)

    def update(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray) -> None:
        """Add a CSR block of raw counts (rows = cells, ``indices`` = vocabulary gene index).

        Bins are ``floor(log1p(normalised) / width)`` computed in float32 (bins are 6% wide).
        """
        from sc_fm.kernels import add_to_histogram, depth_normalise_and_sum

        self.n_cells += len(indptr) - 1
        data = data[: indptr[-1]]
        position = np.empty(len(data), dtype=np.float32)
        depth_normalise_and_sum(indptr, indices, data, CP10K, self.sum_counts, self.sum_norm,
                                self.sumsq_norm, position)
        np.log1p(position, out=position)
        position *= np.float32(1.0 / _BIN_WIDTH)
        add_to_histogram(indices[: indptr[-1]], data, position, self.hist)

    def merge(self, other: "GeneStatsAccumulator") -> None:
        self.n_cells += other.n_cells
        for name in ("sum_counts", "sum_norm", "sumsq_norm", "hist"):
            getattr(self, name).__iadd__(getattr(other, name))

    @classmethod
    def from_stats(cls, stats: GeneStats) -> "GeneStatsAccumulator":
        acc = cls(len(stats.sum_counts))
        acc.n_cells = stats.n_cells
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
    out = np.full(hist.shape[0], np.nan)
    expressed = np.flatnonzero(hist.any(axis=1))  # most of a large vocabulary is absent from a source
    rows = hist[expressed]
    totals = rows.sum(axis=1)
    cum = np.cumsum(rows, axis=1)
    half = totals / 2.0
    k = np.minimum((cum < half[:, None]).sum(axis=1), hist.shape[1] - 1)
    at = np.arange(len(expressed))
    below = np.where(k > 0, cum[at, np.maximum(k - 1, 0)], 0)
    in_bin = np.maximum(rows[at, k], 1)
    out[expressed] = np.expm1((k + (half - below) / in_bin) * _BIN_WIDTH)
    return out
