"""AnnData sources: ``.h5ad`` files read in row blocks through h5py, and in-memory AnnData.

``layer`` picks the counts: ``None`` is ``X``, ``"raw"`` is ``.raw.X`` (with ``.raw.var``),
anything else ``.layers[layer]``. CSR and dense matrices stream row blocks from disk; a CSC
matrix cannot be sliced by rows cheaply, so it is read whole and converted once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from data_pipelines.readers.base import InMemoryReader, SourceReader, csr_rows, reading, string_frame
from sc_fm.errors import InputDataError


def _missing_layer(label: str, layer: str, available: list[str]) -> InputDataError:
    return InputDataError(f"has no layer {layer!r}", label,
                          f"set the source's layer to one of {available + ['raw']} or leave it unset for X")


class H5adReader(SourceReader):
    """Row blocks of an ``.h5ad`` file's counts without loading the matrix."""

    format = "h5ad"

    def __init__(self, path: Path, layer: str | None = None):
        super().__init__(str(path))
        import h5py
        from anndata.io import read_elem, sparse_dataset

        with reading(self.label, "cannot open as an HDF5 AnnData file"):
            self.file = h5py.File(path, "r")
            if "X" not in self.file and "obs" not in self.file:
                raise InputDataError("is not an AnnData file (no X or obs)", self.label,
                                     "pass an .h5ad written by anndata/scanpy")
            if layer == "raw":
                if "raw" not in self.file:
                    raise InputDataError("has no .raw", self.label, "leave the source's layer unset for X")
                element, var = self.file["raw/X"], self.file["raw/var"]
            elif layer is not None:
                layers = self.file.get("layers", {})
                if layer not in layers:
                    raise _missing_layer(self.label, layer, list(layers))
                element, var = layers[layer], self.file["var"]
            else:
                element, var = self.file["X"], self.file["var"]
            self.genes = string_frame(read_elem(var))
            self.obs = read_elem(self.file["obs"])
            self.obs.index = self.obs.index.astype(str)
            self._whole = None
            if isinstance(element, h5py.Dataset):
                self._dense, self._sparse = element, None
            else:
                self._dense, self._sparse = None, sparse_dataset(element)
                self.streams = self._sparse.format == "csr"
                self._indptr, self._indices, self._data = element["indptr"], element["indices"], element["data"]

    @property
    def matrix_shape(self) -> tuple[int, int]:
        source = self._dense if self._dense is not None else self._sparse
        return tuple(source.shape)

    def row_offsets(self, first: int, end: int) -> np.ndarray | None:
        if self._sparse is None or not self.streams:
            return None
        with reading(self.label, "cannot read the matrix's row pointer"):
            return self._indptr[first: end + 1]

    def _read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        if self._dense is not None:
            return sp.csr_matrix(np.asarray(self._dense[start:stop]))
        if self.streams:  # straight from h5py: anndata's backed slicing re-validates every call
            return csr_rows(self._indptr, self._indices, self._data, start, stop, self._sparse.shape[1])
        if self._whole is None:
            self._whole = self._sparse.to_memory().tocsr()
        return self._whole[start:stop]

    def close(self) -> None:
        self.file.close()


def anndata_reader(adata, label: str, layer: str | None = None) -> InMemoryReader:
    """An in-memory (or backed) AnnData as a source."""
    if layer == "raw":
        if adata.raw is None:
            raise InputDataError("has no .raw", label, "leave the source's layer unset for X")
        matrix, var = adata.raw.X, adata.raw.var
    elif layer is not None:
        if layer not in adata.layers:
            raise _missing_layer(label, layer, list(adata.layers))
        matrix, var = adata.layers[layer], adata.var
    else:
        matrix, var = adata.X, adata.var
    if not sp.issparse(matrix):
        matrix = np.asarray(matrix)
    obs = adata.obs.copy()
    obs.index = obs.index.astype(str)
    return InMemoryReader(label, matrix, string_frame(pd.DataFrame(var)), obs)
