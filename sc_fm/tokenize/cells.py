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
        rows = np.asarray(rows, np.int64)
        lengths = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.arange(int(offsets[-1])) + np.repeat(self.offsets[rows] - offsets[:-1], lengths)
        return TokenizedCells(self.gene_ids[flat], self.values[flat], offsets, self.condition_ids[rows])

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


def _single(cell: TokenizedCell) -> TokenizedCells:
    return TokenizedCells(np.asarray(cell.gene_ids), np.asarray(cell.values),
                          np.array([0, len(cell.gene_ids)], np.int64),
                          np.asarray(cell.condition_ids).reshape(1, -1))
