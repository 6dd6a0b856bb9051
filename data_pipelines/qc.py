"""Per-cell quality control on raw source counts, with one drop reason per dropped cell.

Rules run in the order of ``DROP_REASONS``; a cell is counted under the first rule it fails.
QC figures are computed over all the source's genes (the cell's whole library), before genes
are mapped to the vocabulary, and are stored with every kept cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from sc_fm.config import QCConfig
from sc_fm.errors import InputDataError
from sc_fm.stats import row_sums

DROP_REASONS = ("nonfinite", "negative", "duplicate_barcode", "empty", "min_counts", "max_counts",
                "min_genes", "max_mito_fraction")


@dataclass
class CellQC:
    """QC outcome of one block of cells."""

    keep: np.ndarray  # bool [cells]
    drops: dict[str, int]  # reason -> cells dropped for it in this block
    n_counts: np.ndarray  # float64 [cells]
    n_genes: np.ndarray  # int64 [cells]
    mito_fraction: np.ndarray  # float64 [cells]


def _rows_with(block: sp.csr_matrix, bad_values: np.ndarray) -> np.ndarray:
    flags = np.zeros(block.shape[0], dtype=bool)
    if bad_values.any():
        rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
        flags[rows[bad_values]] = True
    return flags


def _refuse(kind: str, rows: np.ndarray, barcodes: np.ndarray, label: str, key: str) -> InputDataError:
    examples = ", ".join(str(b) for b in barcodes[rows][:3])
    return InputDataError(f"{kind} values in {rows.sum()} cell(s) (e.g. {examples})", label,
                          f"pass raw counts, or set prepare.qc.{key}=skip to drop those cells")


def cell_qc(block: sp.csr_matrix, mito: np.ndarray, duplicated: np.ndarray, barcodes: np.ndarray,
            qc: QCConfig, label: str) -> CellQC:
    """Apply the QC rules to a cells x source-genes block of raw counts."""
    nonfinite = _rows_with(block, ~np.isfinite(block.data)) if block.data.dtype.kind == "f" \
        else np.zeros(block.shape[0], dtype=bool)
    negative = _rows_with(block, block.data < 0)
    if nonfinite.any() and qc.on_nonfinite == "error":
        raise _refuse("non-finite (NaN/Inf)", nonfinite, barcodes, label, "on_nonfinite")
    if negative.any() and qc.on_negative == "error":
        raise _refuse("negative", negative, barcodes, label, "on_negative")
    data = block.data
    if nonfinite.any():
        data = np.where(np.isfinite(data), data, 0)
    positive = data > 0
    n_genes = np.diff(block.indptr) if positive.all() else row_sums(block.indptr, positive).astype(np.int64)
    clean = sp.csr_matrix((data, block.indices, block.indptr), shape=block.shape)
    # totals and mitochondrial counts in one pass: a mat-vec with [all genes, mito genes]
    sums = clean @ np.column_stack([np.ones(block.shape[1]), mito]).astype(np.float64)
    n_counts, mito_counts = sums[:, 0], sums[:, 1]
    mito_fraction = np.divide(mito_counts, n_counts, out=np.zeros_like(n_counts), where=n_counts > 0)
    never = np.zeros(block.shape[0], dtype=bool)
    failed = {
        "nonfinite": nonfinite,
        "negative": negative,
        "duplicate_barcode": duplicated & qc.drop_duplicate_barcodes,
        "empty": n_counts <= 0,
        "min_counts": n_counts < qc.min_counts,
        "max_counts": n_counts > qc.max_counts if qc.max_counts is not None else never,
        "min_genes": n_genes < qc.min_genes,
        "max_mito_fraction": (mito_fraction > qc.max_mito_fraction if qc.max_mito_fraction is not None
                              else never),
    }
    keep = np.ones(block.shape[0], dtype=bool)
    drops = {}
    for reason in DROP_REASONS:
        hit = failed[reason] & keep
        drops[reason] = int(hit.sum())
        keep &= ~hit
    return CellQC(keep, drops, n_counts, n_genes, mito_fraction)
