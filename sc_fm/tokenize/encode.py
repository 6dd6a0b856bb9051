"""Row-wise operations on CSR blocks of cells, vectorised over the whole block.

Per-nonzero work stays in flat CSR arrays; only row sorts use a padded ``[cells, max_nnz]``
matrix of ``uint64`` keys that carry their own column in the low 32 bits. NumPy sorts those
with SIMD (the fastest row sort it offers), ties resolve by column (gene order, so results are
deterministic), and excluded entries and padding sort last. Columns come back as ``[n, w]``
matrices with -1 after the last valid entry of each row.
"""

from __future__ import annotations

import numpy as np

_LOW32 = np.uint64(0xFFFFFFFF)
_EXCLUDED = np.uint32(0xFFFFFFFF)  # top half of a key that sorts after every real key


def row_of_nonzeros(indptr: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))


def _columns_by_key(indptr: np.ndarray, key32: np.ndarray, valid: np.ndarray | None,
                    limit: int | None) -> np.ndarray:
    """Per row, the first ``limit`` columns of the valid nonzeros by ascending ``key32``
    (< 2**32 - 1); -1 after the last one."""
    lengths = np.diff(indptr)
    width = int(lengths.max(initial=0))
    present = np.arange(width)[None, :] < lengths[:, None]
    if valid is not None:
        key32 = np.where(valid, key32, _EXCLUDED)
    keys = np.full(present.shape, np.iinfo(np.uint64).max, np.uint64)
    keys[present] = key32.astype(np.uint64) << np.uint64(32)
    keys |= np.arange(width, dtype=np.uint64)[None, :]
    keys.sort(axis=1)
    head = keys[:, :limit]
    cols = (head & _LOW32).astype(np.int64)
    cols[(head >> np.uint64(32)) == _EXCLUDED] = -1
    return cols


def descending_columns(indptr: np.ndarray, score: np.ndarray, valid: np.ndarray | None = None,
                       limit: int | None = None) -> np.ndarray:
    """Per row, columns of the nonzeros by descending positive ``score``.

    Positive float32 bit patterns order like the floats, so the key is their complement.
    """
    bits = np.ascontiguousarray(score, dtype=np.float32).view(np.uint32)
    return _columns_by_key(indptr, np.uint32(0xFFFFFFFF) - bits, valid, limit)


def random_columns(indptr: np.ndarray, rng: np.random.Generator, limit: int | None = None) -> np.ndarray:
    """Per row, columns of the nonzeros in a uniformly random order."""
    keys = rng.integers(0, 2**32 - 1, size=int(indptr[-1]), dtype=np.uint32)
    return _columns_by_key(indptr, keys, None, limit)


def positions(indptr: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat nonzero positions of the valid ``cols`` (row-major) and their count per row."""
    valid = cols >= 0
    return (indptr[:-1, None] + cols)[valid], valid.sum(axis=1)


def quantile_bins(indptr: np.ndarray, values: np.ndarray, n_bins: int) -> np.ndarray:
    """scGPT value binning: per row, ``digitize(v, quantile(row, linspace(0, 1, n_bins - 1)))``.

    Returns bins in ``1..n_bins-1`` per nonzero, matching NumPy's ``quantile`` (linear
    method) and ``digitize`` row by row.
    """
    if values.size == 0:
        return np.zeros(0, np.int64)
    lengths = np.diff(indptr)
    n = len(lengths)
    present = np.arange(int(lengths.max()))[None, :] < lengths[:, None]
    ordered = np.full(present.shape, np.inf)
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
    # one sorted search over all rows: shift row r by r * span so that rows never overlap
    span = float(values.max()) + 1.0
    shift = np.arange(n, dtype=np.float64) * span
    rows = row_of_nonzeros(indptr)
    found = np.searchsorted((edges + shift[:, None]).ravel(), values + shift[rows], side="right")
    return found - rows * (n_bins - 1)


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
