"""Per-nonzero loops of ingestion, compiled with numba.

Statistics and QC touch every stored nonzero; written as numpy expressions they made 10-15
passes over ~2,000 nonzeros per cell (casts, mat-vecs, logs, bincounts) and most of
``scfm prepare``'s CPU time. Compiled loops do the same arithmetic in one pass per job,
while a cell's values are in cache. ``nogil`` lets them run beside the threads that read and
compress blocks.
Import this module lazily: numba's own import costs ~0.3 s, which no other command needs.
Compiled code is cached beside this file (``cache=True``), so only the first run compiles.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def depth_normalise_and_sum(indptr, indices, data, target_sum, sum_counts, sum_norm, sumsq_norm,
                            scaled):  # pragma: no cover - compiled
    """Add a CSR block of raw counts to the per-gene sums; write each nonzero's normalised value.

    ``scaled`` (float32, one per stored value) gets ``count * target_sum / cell total`` in
    float32, ready for a vectorised ``log1p`` (numpy's SIMD log is ~10x faster than a scalar one
    here) before ``add_to_histogram``.
    """
    for row in range(len(indptr) - 1):
        lo, hi = indptr[row], indptr[row + 1]
        total = 0.0
        for j in range(lo, hi):
            total += data[j]
        scale = target_sum / total if total > 0.0 else 0.0
        scale32 = np.float32(scale)
        for j in range(lo, hi):
            count = data[j]
            gene = indices[j]
            value = count * scale
            sum_counts[gene] += count
            sum_norm[gene] += value
            sumsq_norm[gene] += value * value
            scaled[j] = np.float32(count) * scale32


@numba.njit(cache=True, nogil=True)
def add_to_histogram(indices, data, bin_position, hist):  # pragma: no cover - compiled
    """Count each nonzero in bin ``floor(bin_position)`` of its gene (clipped to the last bin)."""
    last = hist.shape[1] - 1
    for j in range(len(indices)):
        if data[j] != 0:
            hist[indices[j], min(int(bin_position[j]), last)] += 1


@numba.njit(cache=True, nogil=True)
def cell_qc_figures(indptr, indices, data, mito, n_counts, mito_counts, n_genes, nonfinite,
                    negative):  # pragma: no cover - compiled
    """Per-cell totals, mitochondrial counts, positive genes and bad-value flags, in place.

    Non-finite values count as 0 in the totals (and flag their cell).
    """
    for row in range(len(indptr) - 1):
        total, in_mito, positive = 0.0, 0.0, 0
        for j in range(indptr[row], indptr[row + 1]):
            value = float(data[j])
            if not math.isfinite(value):
                nonfinite[row] = True
                continue
            if value < 0.0:
                negative[row] = True
            elif value > 0.0:
                positive += 1
            total += value
            if mito[indices[j]]:
                in_mito += value
        n_counts[row], mito_counts[row], n_genes[row] = total, in_mito, positive
