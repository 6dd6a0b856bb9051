"""Tokenised, unmasked cells held flat: one array of tokens for many cells plus offsets.

The tokenizer works on whole blocks of cells at once, so it keeps them concatenated (no
per-cell Python objects on the hot path); ``TokenizedCells`` still behaves as a sequence of
``TokenizedCell`` for callers that want one cell at a time.

Beside the tokens, cells may carry their whole count row (``expression``: every expressed
gene of the vocabulary and its raw count, not only the context): the target of the
cell-level objective, which reconstructs the cell's expression from its embedding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ragged:
    """Variable-length rows back to back: row ``i`` of each array is ``[offsets[i]:offsets[i + 1]]``."""

    offsets: np.ndarray  # int64 [n + 1]
    arrays: tuple[np.ndarray, ...]

    def rows(self, start: int, stop: int) -> "Ragged":
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        return Ragged(self.offsets[start: stop + 1] - lo, tuple(a[lo:hi] for a in self.arrays))

    def row(self, i: int) -> tuple[np.ndarray, ...]:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return tuple(a[lo:hi] for a in self.arrays)

    @classmethod
    def gather(cls, parts: Sequence["Ragged"], rows: np.ndarray) -> "Ragged":
        """Rows ``rows`` (indices over the parts joined) in that order; one slice copy per row."""
        first = np.cumsum([0] + [len(p.offsets) - 1 for p in parts])
        part = np.searchsorted(first, rows, side="right") - 1
        starts = np.concatenate([p.offsets[:-1] for p in parts])[rows].tolist()
        stops = np.concatenate([p.offsets[1:] for p in parts])[rows].tolist()
        spans = list(zip(part.tolist(), starts, stops))
        lengths = np.asarray(stops, np.int64) - np.asarray(starts, np.int64)
        arrays = tuple(_join([parts[p].arrays[j][a:b] for p, a, b in spans], parts[0].arrays[j].dtype)
                       for j in range(len(parts[0].arrays)))
        return cls(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), arrays)

    @classmethod
    def concat(cls, parts: Sequence["Ragged"]) -> "Ragged":
        lengths = np.concatenate([np.diff(p.offsets) for p in parts])
        arrays = tuple(np.concatenate([p.arrays[j] for p in parts]) for j in range(len(parts[0].arrays)))
        return cls(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), arrays)


@dataclass(frozen=True)
class TokenizedCell:
    """One cell: ``<cls>`` then its genes; ``values[0]`` is -1 (hidden) for the ``<cls>``."""

    gene_ids: np.ndarray  # int32 [L] token ids
    values: np.ndarray  # float32 [L]
    condition_ids: np.ndarray  # int64 [C]
    expression: tuple[np.ndarray, np.ndarray] | None = None  # (vocabulary gene index, raw count)


@dataclass(frozen=True)
class TokenizedCells(Sequence):
    """Many cells back to back: cell ``i`` is ``gene_ids[offsets[i]:offsets[i + 1]]``."""

    gene_ids: np.ndarray  # int32 [T] token ids (int64 only once packed: half the bytes in transit)
    values: np.ndarray  # float32 [T]
    offsets: np.ndarray  # int64 [n + 1]
    condition_ids: np.ndarray  # int64 [n, C]
    # each cell's whole count row: gene indices (int32, vocabulary space) and raw counts (float32)
    expression: Ragged | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def tokens(self) -> Ragged:
        return Ragged(self.offsets, (self.gene_ids, self.values))

    @classmethod
    def _of(cls, tokens: Ragged, condition_ids: np.ndarray, expression: Ragged | None) -> "TokenizedCells":
        return cls(tokens.arrays[0], tokens.arrays[1], tokens.offsets, condition_ids, expression)

    def __getitem__(self, item):
        if isinstance(item, slice):
            start, stop, step = item.indices(len(self))
            if step != 1:
                raise IndexError("TokenizedCells supports contiguous slices only")
            stop = max(stop, start)
            return self._of(self.tokens.rows(start, stop), self.condition_ids[start:stop],
                            None if self.expression is None else self.expression.rows(start, stop))
        i = range(len(self))[item]
        gene_ids, values = self.tokens.row(i)
        return TokenizedCell(gene_ids, values, self.condition_ids[i],
                             None if self.expression is None else self.expression.row(i))

    def __iter__(self) -> Iterator[TokenizedCell]:
        return (self[i] for i in range(len(self)))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> "TokenizedCells":
        """Cells ``rows`` (any order, e.g. a shuffle), as one flat group."""
        return TokenizedCells.gather([self], rows)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (what a loader worker sends); ``from_arrays`` rebuilds the cells."""
        out = {"gene_ids": self.gene_ids, "values": self.values, "offsets": self.offsets,
               "condition_ids": self.condition_ids}
        if self.expression is not None:
            out.update(expression_offsets=self.expression.offsets, expression_genes=self.expression.arrays[0],
                       expression_counts=self.expression.arrays[1])
        return out

    @classmethod
    def from_arrays(cls, arrays: dict) -> "TokenizedCells":
        expression = (Ragged(np.asarray(arrays["expression_offsets"]),
                             (np.asarray(arrays["expression_genes"]), np.asarray(arrays["expression_counts"])))
                      if "expression_offsets" in arrays else None)
        return cls(*(np.asarray(arrays[k]) for k in ("gene_ids", "values", "offsets", "condition_ids")),
                   expression)

    @classmethod
    def gather(cls, parts: Sequence["TokenizedCells"], rows: np.ndarray) -> "TokenizedCells":
        """Cells ``rows`` of the parts joined in order (any order, e.g. a shuffle), as one flat
        group. Each cell is one slice copy straight from its part: no joined temporary and no
        per-token index array, which made a shuffled fetch cost ~4x the copying itself."""
        rows = np.asarray(rows, np.int64)
        expression = (Ragged.gather([p.expression for p in parts], rows)
                      if all(p.expression is not None for p in parts) else None)
        return cls._of(Ragged.gather([p.tokens for p in parts], rows),
                       np.concatenate([p.condition_ids for p in parts])[rows], expression)

    @classmethod
    def concat(cls, parts: Sequence["TokenizedCells | TokenizedCell"]) -> "TokenizedCells":
        """Join cells (flat groups or single cells) in order."""
        groups = [p if isinstance(p, TokenizedCells) else _single(p) for p in parts]
        if not groups:
            raise ValueError("no cells to join")
        expression = (Ragged.concat([g.expression for g in groups])
                      if all(g.expression is not None for g in groups) else None)
        tokens = Ragged.concat([g.tokens for g in groups])
        return cls(tokens.arrays[0].astype(np.int32, copy=False), tokens.arrays[1].astype(np.float32, copy=False),
                   tokens.offsets, np.concatenate([g.condition_ids for g in groups]).astype(np.int64, copy=False),
                   expression)


def _join(pieces: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(pieces).astype(dtype, copy=False) if pieces else np.zeros(0, dtype)


def _single(cell: TokenizedCell) -> TokenizedCells:
    expression = None
    if cell.expression is not None:
        genes, counts = cell.expression
        expression = Ragged(np.array([0, len(genes)], np.int64), (np.asarray(genes), np.asarray(counts)))
    return TokenizedCells(np.asarray(cell.gene_ids), np.asarray(cell.values),
                          np.array([0, len(cell.gene_ids)], np.int64),
                          np.asarray(cell.condition_ids).reshape(1, -1), expression)
