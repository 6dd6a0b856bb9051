"""Row-wise operations on CSR blocks of cells, vectorised over the whole block.

Per-nonzero work stays in flat CSR arrays; only row sorts use a padded ``[cells, max_nnz]``
matrix of ``uint64`` keys that carry their own column in the low 32 bits. NumPy sorts those
with SIMD (the fastest row sort it offers), ties resolve by column (gene order, so results are
deterministic), and excluded entries and padding sort last; a top-``k`` is a SIMD partition
and a sort of ``k`` columns only. Selections come back as flat nonzero positions (row-major)
and a count per row.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

_LOW, _HIGH = (0, 1) if sys.byteorder == "little" else (1, 0)  # uint32 halves of a uint64
_EXCLUDED = np.uint32(0xFFFFFFFF)  # top half of a key that sorts after every real key


_SCRATCH = threading.local()
_SCRATCH_MAX_BYTES = 32 << 20  # larger passes allocate as usual


def _scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised array that this thread reuses from call to call (never returned to
    callers): a fresh multi-MB array costs a page fault per 4 kB every time glibc has handed
    the last one back to the kernel, which was about a quarter of the tokeniser's time."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    if size * dtype.itemsize > _SCRATCH_MAX_BYTES:
        return np.empty(shape, dtype)
    buffer = getattr(_SCRATCH, name, None)
    if buffer is None or buffer.size < size or buffer.dtype != dtype:
        buffer = np.empty(size, dtype)
        setattr(_SCRATCH, name, buffer)
    return buffer[:size].reshape(shape)


def row_of_nonzeros(indptr: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))


def top_positions(indptr: np.ndarray, key32: np.ndarray, valid: np.ndarray | None,
                  limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first ``limit`` valid nonzeros by ascending ``key32`` (< 2**32 - 1), ties
    by column: their flat positions (row-major, in that order) and their count per row.

    Keys carry their column in the low 32 bits (unique within a row, so the order is
    total); when a row is longer than ``limit`` only its first ``limit`` keys are sorted,
    after a (SIMD) partition that selects exactly those keys.
    """
    if valid is not None:
        key32 = np.where(valid, key32, _EXCLUDED)
    lengths = np.diff(indptr)
    n, width = len(lengths), int(lengths.max(initial=0))
    # [n, width] uint64 keys built from two uint32 halves: the column below, key32 above
    # (excluded entries and padding: all ones, so they sort last)
    halves = _scratch("keys", (n, width, 2), np.uint32)
    halves[:, :, _LOW] = np.arange(width, dtype=np.uint32)[None, :]
    high = halves[:, :, _HIGH]
    high.fill(_EXCLUDED)
    high[np.arange(width)[None, :] < lengths[:, None]] = key32
    keys = halves.view(np.uint64).reshape(n, width)
    if limit is not None and limit < width:
        keys.partition(limit - 1, axis=1)
        keys = keys[:, :limit].copy()
    keys.sort(axis=1)
    halves = keys.view(np.uint32).reshape(*keys.shape, 2)
    ok = halves[:, :, _HIGH] != _EXCLUDED
    cols = halves[:, :, _LOW].astype(np.int64)
    cols += indptr[:-1, None]
    return cols[ok], ok.sum(axis=1)


def descending_positions(indptr: np.ndarray, score: np.ndarray, valid: np.ndarray | None = None,
                         limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``top_positions`` by descending positive ``score``.

    Positive float32 bit patterns order like the floats, so the key is their complement.
    """
    keys = score.astype(np.float32).view(np.uint32)
    return top_positions(indptr, np.invert(keys, out=keys), valid, limit)


def random_positions(indptr: np.ndarray, rng: np.random.Generator,
                     limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``top_positions`` in a uniformly random order."""
    keys = rng.integers(0, 2**32 - 1, size=int(indptr[-1]), dtype=np.uint32)
    return top_positions(indptr, keys, None, limit)


def quantile_bins(indptr: np.ndarray, values: np.ndarray, n_bins: int, at: np.ndarray,
                  at_rows: np.ndarray, rank: np.ndarray | None = None) -> np.ndarray:
    """scGPT value binning: per row, ``digitize(v, quantile(row, linspace(0, 1, n_bins - 1)))``,
    for the nonzeros at flat positions ``at`` (in rows ``at_rows``).

    Returns bins in ``1..n_bins-1``, matching NumPy's ``quantile`` (linear method) and
    ``digitize`` row by row. ``rank``, a guess of each ``at``'s position in its sorted row,
    lets most bins be read from a count over the sorted rows; a guess is used only where the
    sorted row holds exactly that value there, the rest are searched for.
    """
    if values.size == 0:
        return np.zeros(len(at), np.int64)
    lengths = np.diff(indptr)
    n = len(lengths)
    present = np.arange(int(lengths.max()))[None, :] < lengths[:, None]
    ordered = _scratch("ordered", present.shape, np.float64)
    ordered.fill(np.inf)
    ordered[present] = values
    ordered.sort(axis=1)
    last = np.maximum(lengths, 1)[:, None] - 1
    virtual = np.linspace(0.0, 1.0, n_bins - 1)[None, :] * last
    lo = np.floor(virtual).astype(np.int64)
    hi = np.minimum(lo + 1, last)
    t = virtual - lo
    a = np.take_along_axis(ordered, lo, axis=1)
    b = np.take_along_axis(ordered, hi, axis=1)
    with np.errstate(invalid="ignore"):  # empty rows: inf - inf, overwritten below
        edges = np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)  # NumPy's _lerp
    edges[lengths == 0] = 0.0
    # rows never overlap once row r is shifted by r * span: one sorted array for all rows
    span = float(values.max()) + 1.0
    shift = np.arange(n, dtype=np.float64) * span
    shifted_edges = (edges + shift[:, None]).ravel()
    out = np.empty(len(at), np.int64)
    hit = np.zeros(len(at), bool)
    if rank is not None and len(at):
        sorted_values = ordered[present]
        guess = indptr[:-1][at_rows] + rank
        hit = sorted_values[guess] == values[at]
        sorted_values += np.repeat(shift, lengths)
        first = np.searchsorted(sorted_values, shifted_edges, side="left")
        steps = np.diff(first, prepend=0, append=len(values))
        if np.any(steps < 0):  # edges out of order by rounding: search for every bin instead
            hit[:] = False
        if hit.any():
            # bin of sorted position i = edges <= its value = edges whose first position with a
            # value >= them is <= i: a cumulative count of those first positions
            below = np.repeat(np.arange(len(first) + 1), steps)
            out[hit] = below[guess[hit]] - at_rows[hit] * (n_bins - 1)
    miss = np.flatnonzero(~hit)
    if len(miss):
        rows = at_rows[miss]
        found = np.searchsorted(shifted_edges, values[at[miss]] + shift[rows], side="right")
        out[miss] = found - rows * (n_bins - 1)
    return out


def sample_unexpressed(indptr: np.ndarray, indices: np.ndarray, n_genes: int, k: int,
                       rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``k`` genes per row that the row does not express: ``[n, k]`` genes and valid mask.

    With ``rng`` None the choice is deterministic (a fixed stride through the vocabulary),
    so inference tokenisation stays a pure function of the cell.
    """
    n = len(indptr) - 1
    draws = 2 * k + 8
    if rng is None:
        candidates = (np.arange(n)[:, None] * 7919 + np.arange(draws)[None, :] * 104729) % n_genes
    else:
        candidates = rng.integers(0, n_genes, size=(n, draws))
    expressed = row_of_nonzeros(indptr) * n_genes + indices
    if np.any(np.diff(expressed) <= 0):  # rows with unsorted gene indices
        expressed = np.sort(expressed)
    flat = (np.arange(n)[:, None] * n_genes + candidates).ravel()
    at = np.minimum(np.searchsorted(expressed, flat), max(len(expressed) - 1, 0))
    free = expressed[at] != flat if len(expressed) else np.ones(flat.size, bool)
    _, first = np.unique(flat, return_index=True)  # a gene drawn twice counts once
    unique = np.zeros(flat.size, bool)
    unique[first] = True
    ok = (free & unique).reshape(n, draws)
    chosen = ok & (np.cumsum(ok, axis=1) <= k)
    order = np.argsort(~chosen, axis=1, kind="stable")[:, :k]  # chosen first, in draw order
    return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(chosen, order, axis=1)
