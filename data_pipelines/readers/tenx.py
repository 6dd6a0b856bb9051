"""10x Genomics outputs: ``filtered_feature_bc_matrix.h5`` and matrix-market folders.

Both store genes x cells; the HDF5 matrix is CSC over cells, so a block of cells is a
contiguous slice of ``indptr``/``indices``/``data`` and streams from disk. A matrix-market
file has no index, so it is parsed whole (scipy's multi-threaded reader). Non-gene features
(antibody capture, CRISPR guides) are kept in the gene table with their ``feature_type`` so
that harmonisation can leave them out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from data_pipelines.readers.base import InMemoryReader, SourceReader, csr_rows, reading
from sc_fm.errors import InputDataError


def _strings(dataset) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in dataset[:]], dtype=object)


class TenxH5Reader(SourceReader):
    """Cell blocks of a Cell Ranger HDF5 matrix (v3 ``matrix`` group or v2 per-genome group)."""

    format = "10x-h5"

    def __init__(self, path: Path):
        super().__init__(str(path))
        import h5py

        with reading(self.label, "cannot open as a 10x HDF5 matrix"):
            self.file = h5py.File(path, "r")
            if "matrix" in self.file:
                group = self.file["matrix"]
                features = group["features"]
                genes = {"symbol": _strings(features["name"])}
                if "feature_type" in features:
                    genes["feature_type"] = _strings(features["feature_type"])
                ids = _strings(features["id"])
            elif len(self.file) == 1 and "genes" in next(iter(self.file.values())):
                group = next(iter(self.file.values()))
                ids, genes = _strings(group["genes"]), {"symbol": _strings(group["gene_names"])}
            else:
                raise InputDataError("is not a 10x feature-barcode matrix (no matrix group)", self.label,
                                     "pass Cell Ranger's filtered_feature_bc_matrix.h5")
            self.genes = pd.DataFrame(genes, index=pd.Index(ids, name="gene_id"))
            self.obs = pd.DataFrame(index=pd.Index(_strings(group["barcodes"]), name="barcode"))
            self._shape = tuple(int(v) for v in group["shape"][:])
            self._indptr = group["indptr"][:]
            self._indices, self._data = group["indices"], group["data"]

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return self._shape[1], self._shape[0]

    def row_offsets(self, first: int, end: int) -> np.ndarray:
        return self._indptr[first: end + 1]

    def _read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        return csr_rows(self._indptr, self._indices, self._data, start, stop, self._shape[0])

    def close(self) -> None:
        self.file.close()


def _find(folder: Path, *names: str) -> Path | None:
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _read_table(path: Path, label: str) -> pd.DataFrame:
    with reading(label, f"cannot read {path.name}"):
        return pd.read_csv(path, sep="\t", header=None, dtype=str)


def tenx_mtx_reader(folder: Path) -> InMemoryReader:
    """A Cell Ranger matrix-market folder: matrix.mtx[.gz], features/genes.tsv[.gz], barcodes.tsv[.gz]."""
    label = str(folder)
    matrix_path = _find(folder, "matrix.mtx")
    features_path = _find(folder, "features.tsv", "genes.tsv")
    barcodes_path = _find(folder, "barcodes.tsv")
    if matrix_path is None or features_path is None or barcodes_path is None:
        raise InputDataError("is not a 10x matrix folder (needs matrix.mtx, features.tsv or genes.tsv, "
                             "and barcodes.tsv, optionally gzipped)", label,
                             "point at Cell Ranger's filtered_feature_bc_matrix folder")
    for path in (matrix_path, features_path, barcodes_path):
        if path.stat().st_size == 0:
            raise InputDataError(f"{path.name} is empty", label, "re-export the 10x folder")
    from scipy.io import mmread

    with reading(label, f"cannot parse {matrix_path.name}"):
        try:
            counts = sp.csr_matrix(mmread(matrix_path)).T.tocsr()
        except ValueError as err:
            raise InputDataError(f"{matrix_path.name} is not a valid matrix-market file ({err})", label,
                                 "re-export the matrix; the file looks truncated or corrupt") from err
    features = _read_table(features_path, label)
    genes = {"symbol": features[1].to_numpy()} if features.shape[1] > 1 else {}
    if features.shape[1] > 2:
        genes["feature_type"] = features[2].to_numpy()
    gene_table = pd.DataFrame(genes, index=pd.Index(features[0].to_numpy(), name="gene_id"))
    barcodes = _read_table(barcodes_path, label)[0].to_numpy()
    reader = InMemoryReader(label, counts, gene_table,
                            pd.DataFrame(index=pd.Index(barcodes, name="barcode")))
    reader.format = "10x-mtx"
    return reader
