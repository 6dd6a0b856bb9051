"""Tokenised, unmasked cells held flat: one array of tokens for many cells plus offsets.

The tokenizer works on whole blocks of cells at once, so it keeps them concatenated (no
per-cell Python objects on the hot path); ``TokenizedCells`` still behaves as a sequence of
``TokenizedCell`` for callers that want one cell at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenizedCell:
    """One cell: ``<cls>`` then its genes; ``values[0]`` is -1 (hidden) for the ``<cls>``."""

    gene_ids: np.ndarray  # int32 [L] token ids
    values: np.ndarray  # float32 [L]
    condition_ids: np.ndarray  # int64 [C]


@dataclass(frozen=True)
class TokenizedCells(Sequence):
    """Many cells back to back: cell ``i`` is ``gene_ids[offsets[i]:offsets[i + 1]]``."""

    gene_ids: np.ndarray  # int32 [T] token ids (int64 only once packed: half the bytes in transit)
    values: np.ndarray  # float32 [T]
    offsets: np.ndarray  # int64 [n + 1]
    condition_ids: np.ndarray  # int64 [n, C]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, item):
        if isinstance(item, slice):
            start, stop, step = item.indices(len(self))
            if step != 1:
                raise IndexError("TokenizedCells supports contiguous slices only")
            lo, hi = int(self.offsets[start]), int(self.offsets[max(stop, start)])
            return TokenizedCells(self.gene_ids[lo:hi], self.values[lo:hi],
                                  self.offsets[start: max(stop, start) + 1] - lo,
                                  self.condition_ids[start:max(stop, start)])
        i = range(len(self))[item]
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return TokenizedCell(self.gene_ids[lo:hi], self.values[lo:hi], self.condition_ids[i])

    def __iter__(self) -> Iterator[TokenizedCell]:
        return (self[i] for i in range(len(self)))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> "TokenizedCells":
        """Cells ``rows`` (any order, e.g. a shuffle), as one flat group."""
        return TokenizedCells.gather([self], rows)

    @classmethod
    def gather(cls, parts: Sequence["TokenizedCells"], rows: np.ndarray) -> "TokenizedCells":
        """Cells ``rows`` of the parts joined in order (any order, e.g. a shuffle), as one flat
        group. Each cell is one slice copy straight from its part: no joined temporary and no
        per-token index array, which made a shuffled fetch cost ~4x the copying itself."""
        rows = np.asarray(rows, np.int64)
        first = np.cumsum([0] + [len(p) for p in parts])
        part = np.searchsorted(first, rows, side="right") - 1
        spans = list(zip(part.tolist(), np.concatenate([p.offsets[:-1] for p in parts])[rows].tolist(),
                         np.concatenate([p.offsets[1:] for p in parts])[rows].tolist()))
        lengths = np.concatenate([p.lengths for p in parts])[rows]
        return cls(_join([parts[p].gene_ids[a:b] for p, a, b in spans], np.int32),
                   _join([parts[p].values[a:b] for p, a, b in spans], np.float32),
                   np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                   np.concatenate([p.condition_ids for p in parts])[rows])

    @classmethod
    def concat(cls, parts: Sequence["TokenizedCells | TokenizedCell"]) -> "TokenizedCells":
        """Join cells (flat groups or single cells) in order."""
        groups = [p if isinstance(p, TokenizedCells) else _single(p) for p in parts]
        if not groups:
            raise ValueError("no cells to join")
        lengths = np.concatenate([g.lengths for g in groups])
        return cls(np.concatenate([g.gene_ids for g in groups]).astype(np.int32, copy=False),
                   np.concatenate([g.values for g in groups]).astype(np.float32, copy=False),
                   np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                   np.concatenate([g.condition_ids for g in groups]).astype(np.int64, copy=False))


def _join(pieces: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(pieces).astype(dtype, copy=False) if pieces else np.zeros(0, dtype)


def _single(cell: TokenizedCell) -> TokenizedCells:
    return TokenizedCells(np.asarray(cell.gene_ids), np.asarray(cell.values),
                          np.array([0, len(cell.gene_ids)], np.int64),
                          np.asarray(cell.condition_ids).reshape(1, -1))
