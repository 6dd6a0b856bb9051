"""The one interface every input format implements: genes, cells, and cell blocks as CSR."""

from __future__ import annotations

import gzip
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sc_fm.errors import InputDataError

# What a truncated or corrupt file raises from h5py, gzip, zlib, pandas and scipy readers.
CORRUPT_FILE_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError,
                       pd.errors.ParserError, pd.errors.EmptyDataError)


@contextmanager
def reading(label: str, what: str = "cannot read the file"):
    """Turn a low-level read failure into an ``InputDataError`` naming the file and the fix."""
    try:
        yield
    except InputDataError:
        raise
    except CORRUPT_FILE_ERRORS as err:
        raise InputDataError(f"{what}: it looks truncated or corrupt ({type(err).__name__}: {err})",
                             label, "re-download or re-export the file and check its checksum") from err


def csr_rows(indptr, indices, data, start: int, stop: int, n_genes: int) -> sp.csr_matrix:
    """Rows ``[start, stop)`` of a CSR matrix kept as three 1-D arrays (HDF5 datasets or
    arrays), reading only those rows' slice of ``indices`` and ``data``."""
    offsets = indptr[start: stop + 1]
    lo, hi = int(offsets[0]), int(offsets[-1])
    return sp.csr_matrix((data[lo:hi], indices[lo:hi], offsets - lo), shape=(stop - start, n_genes))


class SourceReader(ABC):
    """Cells x genes counts of one source, readable in row blocks.

    ``genes`` has one row per matrix column: its index is the gene identifier as the file gives
    it, other string columns (``symbol``, ``feature_type``...) are alternative names. ``obs``
    has one row per cell, indexed by barcode, with the source's per-cell metadata.
    """

    format: str = "?"
    streams: bool = True  # row blocks come from disk: a row range can be read without the rest

    def __init__(self, label: str):
        self.label = label
        self.genes: pd.DataFrame = pd.DataFrame()
        self.obs: pd.DataFrame = pd.DataFrame()

    @property
    def n_cells(self) -> int:
        return len(self.obs)

    @property
    @abstractmethod
    def matrix_shape(self) -> tuple[int, int]:
        """(cells, genes) of the count matrix as stored."""

    @abstractmethod
    def _read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``[start, stop)`` as CSR."""

    def validate(self) -> None:
        """Refuse empty matrices and gene/cell tables that do not match the matrix."""
        n_cells, n_genes = self.matrix_shape
        if n_cells == 0 or n_genes == 0:
            raise InputDataError(f"the count matrix is empty ({n_cells} cells x {n_genes} genes)",
                                 self.label, "pass a file that holds counts, or remove it from the sources")
        if len(self.genes) != n_genes:
            raise InputDataError(f"the gene table has {len(self.genes)} entries but the count matrix has "
                                 f"{n_genes} genes", self.label,
                                 "use the gene table written with this matrix (same row order and length)")
        if len(self.obs) != n_cells:
            raise InputDataError(f"the cell table has {len(self.obs)} entries but the count matrix has "
                                 f"{n_cells} cells", self.label,
                                 "use the barcode/metadata table written with this matrix")

    def row_offsets(self, first: int, end: int) -> np.ndarray | None:
        """The CSR row pointer over rows ``[first, end]`` when the file stores one (None: unknown)."""
        return None

    def block_bounds(self, block_cells: int, block_nnz: int | None, first: int, end: int,
                     ) -> list[tuple[int, int]]:
        """Row ranges of at most ``block_cells`` rows and, where the row pointer is known, at most
        ``block_nnz`` nonzeros (at least one row each): memory then follows the nonzeros, so a
        deeply sequenced study gets shorter blocks instead of larger ones."""
        offsets = self.row_offsets(first, end) if block_nnz is not None else None
        if offsets is None:
            return [(start, min(start + block_cells, end)) for start in range(first, end, block_cells)]
        offsets, bounds, start = np.asarray(offsets, np.int64), [], first
        while start < end:
            fits = int(np.searchsorted(offsets, offsets[start - first] + block_nnz, side="right")) - 1 + first
            stop = min(start + block_cells, end, max(fits, start + 1))
            bounds.append((start, stop))
            start = stop
        return bounds

    def blocks(self, block_cells: int, first: int = 0, end: int | None = None, block_nnz: int | None = None,
               ) -> Iterator[tuple[int, sp.csr_matrix]]:
        """``(first row, CSR block)`` over rows ``[first, end)`` in ``block_bounds`` ranges."""
        end = self.n_cells if end is None else end
        for start, stop in self.block_bounds(block_cells, block_nnz, first, end):
            with reading(self.label, f"cannot read cells {start}-{stop}"):
                block = self._read_rows(start, stop)
            yield start, sp.csr_matrix(block)

    def close(self) -> None:
        """Release open file handles."""


class InMemoryReader(SourceReader):
    """A reader whose matrix is already (or must be) in memory: AnnData, matrix market, tables."""

    streams = False

    def __init__(self, label: str, matrix, genes: pd.DataFrame, obs: pd.DataFrame):
        super().__init__(label)
        self.matrix = sp.csr_matrix(matrix) if sp.issparse(matrix) and matrix.format != "csr" else matrix
        self.genes = genes
        self.obs = obs

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)

    def _read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        rows = self.matrix[start:stop]
        return rows if sp.issparse(rows) else sp.csr_matrix(np.asarray(rows))


def string_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the string-valued columns of a gene table (candidates for gene identifiers)."""
    keep = [c for c in frame.columns
            if frame[c].dtype == object or isinstance(frame[c].dtype, (pd.CategoricalDtype, pd.StringDtype))]
    out = frame[keep].astype(str)
    out.index = frame.index.astype(str)
    return out
