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

# the rules that assume raw counts: skipped for a source ingested with prepare.allow_non_counts
COUNT_RULES = ("min_counts", "max_counts", "max_mito_fraction")
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


def _refuse(kind: str, rows: np.ndarray, barcodes: np.ndarray, label: str, key: str) -> InputDataError:
    examples = ", ".join(str(b) for b in barcodes[rows][:3])
    return InputDataError(f"{kind} values in {rows.sum()} cell(s) (e.g. {examples})", label,
                          f"pass raw counts, or set prepare.qc.{key}=skip to drop those cells")


INT32_MAX = int(np.iinfo(np.int32).max)  # the store keeps whole-number counts as int32


def _check_count_range(block: sp.csr_matrix, barcodes: np.ndarray, label: str) -> None:
    """Refuse whole-number values the store's int32 counts cannot hold (never wrap them)."""
    big = np.flatnonzero(np.isfinite(block.data) & (block.data > INT32_MAX))
    if not len(big) or not np.array_equal(np.floor(block.data[big]), block.data[big]):
        return
    rows = np.searchsorted(block.indptr, big, side="right") - 1
    raise InputDataError(f"count {int(block.data[big[0]]):,} (cell {barcodes[rows[0]]}; {len(big)} "
                         f"value(s) in {len(np.unique(rows))} cell(s)) is above {INT32_MAX:,}, the "
                         "largest count the store holds (int32); it would be wrapped", label,
                         "raw UMI/read counts per gene and cell never come near this: check the source "
                         "holds counts (the right layer, e.g. layer: counts), or scale the values down")


def first_non_integer(data: np.ndarray, sample: int = 65536) -> int | None:
    """Position of the first finite value that is not a whole number among the first ``sample``
    values of a block, or None. A sample keeps this cheap (non-count data such as log1p or CP10k
    is fractional nearly everywhere); the shard writer still checks every stored value."""
    if data.dtype.kind in "biu":
        return None
    head = data[:sample]
    found = np.flatnonzero((head != np.floor(head)) & np.isfinite(head))
    return int(found[0]) if len(found) else None


def non_counts_error(label: str, example: str) -> InputDataError:
    return InputDataError(f"holds values that are not whole-number counts ({example}): log-normalised or "
                          "scaled (CP10k) values would be ingested, QC'd and trained on as if they were raw "
                          "counts", label,
                          "point at the raw counts (for an h5ad, `layer: counts` or `layer: raw` in a source "
                          "list), or set prepare.allow_non_counts=true to ingest them as they are (recorded "
                          f"in the manifest; the count-based QC rules {', '.join(COUNT_RULES)} are skipped)")


def cell_qc(block: sp.csr_matrix, mito: np.ndarray, duplicated: np.ndarray, barcodes: np.ndarray,
            qc: QCConfig, label: str, counts: bool = True) -> CellQC:
    """Apply the QC rules to a cells x source-genes block of raw counts (``counts=False``: values
    that are not counts, so the ``COUNT_RULES`` are skipped)."""
    from sc_fm.kernels import cell_qc_figures

    n_cells = block.shape[0]
    n_counts, mito_counts = np.zeros(n_cells), np.zeros(n_cells)
    n_genes = np.zeros(n_cells, dtype=np.int64)
    nonfinite, negative = np.zeros(n_cells, dtype=bool), np.zeros(n_cells, dtype=bool)
    cell_qc_figures(block.indptr, block.indices, block.data, mito, n_counts, mito_counts, n_genes,
                    nonfinite, negative)
    if nonfinite.any() and qc.on_nonfinite == "error":
        raise _refuse("non-finite (NaN/Inf)", nonfinite, barcodes, label, "on_nonfinite")
    if negative.any() and qc.on_negative == "error":
        raise _refuse("negative", negative, barcodes, label, "on_negative")
    if counts and n_cells and n_counts.max() > INT32_MAX:  # a cell's total bounds its values: usually no scan
        _check_count_range(block, barcodes, label)
    mito_fraction = np.divide(mito_counts, n_counts, out=np.zeros_like(n_counts), where=n_counts > 0)
    never = np.zeros(n_cells, dtype=bool)
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
    if not counts:
        failed.update(dict.fromkeys(COUNT_RULES, never))
    keep = np.ones(n_cells, dtype=bool)
    drops = {}
    for reason in DROP_REASONS:
        hit = failed[reason] & keep
        drops[reason] = int(hit.sum())
        keep &= ~hit
    return CellQC(keep, drops, n_counts, n_genes, mito_fraction)
