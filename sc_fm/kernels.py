"""Per-nonzero loops of ingestion and of depth augmentation, compiled with numba.

Statistics and QC touch every stored nonzero; written as numpy expressions they made 10-15
passes over ~2,000 nonzeros per cell (casts, mat-vecs, logs, bincounts) and most of
``scfm prepare``'s CPU time. Compiled loops do the same arithmetic in one pass per job,
while a cell's values are in cache. ``nogil`` lets them run beside the threads that read and
compress blocks. Binomial thinning of training cells is the same kind of loop: one draw per
nonzero, which numpy's ``binomial`` makes at ~65 ns each.
Import this module lazily: numba's own import costs ~0.3 s, which not every command needs.
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


BINOMIAL_CHUNK = 1000  # counts above this are drawn as sums of chunks: (1/2)^1000 is still a normal float


@numba.njit(cache=True, nogil=True)
def thinning_draws(indptr, data, thinned):  # pragma: no cover - compiled
    """How many uniforms ``thin_rows`` takes: one per chunk of each thinned cell's counts."""
    total = 0
    for row in range(len(indptr) - 1):
        if thinned[row]:
            for j in range(indptr[row], indptr[row + 1]):
                total += max(1, (int(data[j]) + BINOMIAL_CHUNK - 1) // BINOMIAL_CHUNK)
    return total


@numba.njit(cache=True, nogil=True)
def thin_rows(indptr, indices, data, thinned, fraction, uniforms, out_indptr, out_indices,
              out_data):  # pragma: no cover - compiled
    """Binomial thinning of the ``thinned`` rows of a CSR block of counts, zeros dropped.

    A thinned row's count ``n`` becomes Binomial(``n``, ``fraction[row]``), each chunk of
    up to ``BINOMIAL_CHUNK`` drawn from the next uniform by walking the CDF up from 0
    successes: the inverse CDF of that uniform, so exact, and reproducible from the caller's
    generator. With ``p > 0.5`` the walk counts failures (``n - Binomial(n, 1 - p)``):
    expected steps ``n * min(p, 1 - p)``, and the starting probability ``(1 - q)^m`` of a
    chunk stays a normal float. Per row, ``(1 - q)^m`` for the small counts that make up
    most of a row is a table, so a value costs a lookup and a short walk. Other rows are
    copied. Returns the nonzeros written.
    """
    powers = np.empty(_POWER_TABLE + 1)
    at, written = 0, 0
    out_indptr[0] = 0
    for row in range(len(indptr) - 1):
        lo, hi = indptr[row], indptr[row + 1]
        if not thinned[row]:
            for j in range(lo, hi):
                if data[j] > 0:
                    out_indices[written] = indices[j]
                    out_data[written] = data[j]
                    written += 1
            out_indptr[row + 1] = written
            continue
        p = fraction[row]
        flip = p > 0.5
        q = 1.0 - p if flip else p
        odds = q / (1.0 - q)
        powers[0] = 1.0
        for m in range(1, _POWER_TABLE + 1):
            powers[m] = powers[m - 1] * (1.0 - q)
        for j in range(lo, hi):
            n = int(data[j])
            successes, left = 0, n
            while left > 0:
                m = min(left, BINOMIAL_CHUNK)
                left -= m
                u = uniforms[at]
                at += 1
                pmf = powers[m] if m <= _POWER_TABLE else math.exp(m * math.log1p(-q))
                cdf, k = pmf, 0
                while u > cdf and k < m:
                    pmf *= (m - k) * odds / (k + 1.0)
                    k += 1
                    cdf += pmf
                successes += k
            kept = n - successes if flip else successes
            if kept > 0:
                out_indices[written] = indices[j]
                out_data[written] = kept
                written += 1
        out_indptr[row + 1] = written
    return written


_POWER_TABLE = 64
