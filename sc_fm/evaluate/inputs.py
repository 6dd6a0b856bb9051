"""Checks on a benchmark's cells before any expensive step (column and counts checks: ``sc_fm.pretrained.inputs``)."""

from __future__ import annotations

from sc_fm.errors import InputDataError
from sc_fm.pretrained.inputs import require_counts, require_obs_column, stored_values

__all__ = ["require_counts", "require_labels", "require_obs_column", "stored_values"]


MIN_CELLS = 100  # scib-metrics builds a 90-nearest-neighbour graph (k = 15/50/90) over all cells
MIN_CELLS_PER_LABEL = 2  # a stratified held-out split for label transfer needs two cells of every class


def require_labels(adata, label_key: str, where: str) -> None:
    """Enough cells, at least two label classes, and at least two cells per class to score anything."""
    if adata.n_obs < MIN_CELLS:
        raise InputDataError(
            f"only {adata.n_obs} cells; the benchmark needs at least {MIN_CELLS} because scib-metrics scores "
            f"every embedding on 15-, 50- and 90-nearest-neighbour graphs and a held-out 30% of the cells is "
            f"used for label transfer", where, f"benchmark on at least {MIN_CELLS} cells")
    counts = adata.obs[label_key].astype(str).value_counts()
    if len(counts) < 2:
        only = f"the single value {counts.index[0]!r}" if len(counts) else "no values"
        raise InputDataError(
            f".obs[{label_key!r}] has {only} for all {adata.n_obs} cells; bio-conservation metrics and label "
            f"transfer compare at least two cell types", where,
            "pass with --label-key a column that holds the cell types (two or more classes), e.g. "
            "'cell_type'")
    rare = counts[counts < MIN_CELLS_PER_LABEL]
    if len(rare):
        listed = ", ".join(f"{name!r} ({n})" for name, n in rare.items())
        raise InputDataError(
            f".obs[{label_key!r}] has classes with fewer than {MIN_CELLS_PER_LABEL} cells: {listed}; "
            f"a held-out label-transfer split needs {MIN_CELLS_PER_LABEL} cells of every class", where,
            "drop those cells or merge those classes into a broader label before benchmarking")
