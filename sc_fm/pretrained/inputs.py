"""Checks on user AnnData before any expensive step: columns present, counts really counts."""

from __future__ import annotations

import sys

import numpy as np
import scipy.sparse as sp

from sc_fm.errors import InputDataError


COUNTS_LAYER = "counts"


def counts_matrix(adata, where: str):
    """The raw counts: ``adata.X``, or ``layers["counts"]`` when the file has no X (a note on
    stderr says so); neither is the one-paragraph error."""
    try:
        matrix = adata.X
    except KeyError:  # a backed file without X
        matrix = None
    if matrix is not None:
        return matrix
    if COUNTS_LAYER in adata.layers:
        print(f"scfm: {where} has no X; reading the raw counts from layers[{COUNTS_LAYER!r}]", file=sys.stderr)
        return adata.layers[COUNTS_LAYER]
    raise InputDataError(f"the AnnData has no X and no layers[{COUNTS_LAYER!r}] (layers: "
                         f"{', '.join(adata.layers.keys()) or 'none'})", where,
                         f"store the raw counts in .X or in .layers[{COUNTS_LAYER!r}]")


def require_obs_column(adata, key: str | None, option: str, where: str) -> None:
    """``adata.obs[key]`` must exist and hold no missing values (``option`` names the flag to fix)."""
    if key is None:
        return
    if key not in adata.obs.columns:
        raise InputDataError(f"no column {key!r} in .obs (columns: {', '.join(map(str, adata.obs.columns))})",
                             where, f"pass an existing column with {option}")
    if adata.obs[key].isna().any():
        n = int(adata.obs[key].isna().sum())
        raise InputDataError(f".obs[{key!r}] has {n} missing values", where,
                             f"fill or drop those cells, or choose another column with {option}")


def require_counts(values: np.ndarray, where: str) -> None:
    """Raw counts are finite, non-negative integers; log-normalised or scaled data are refused."""
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)) or values.min() < 0:
        raise InputDataError("expression values are negative or not finite, so not raw counts", where,
                             "pass raw UMI/read counts in .X (e.g. adata.layers['counts'])")
    if not np.array_equal(values, np.round(values)):
        raise InputDataError("expression values are not integers, so not raw counts (log-normalised?)", where,
                             "pass raw UMI/read counts in .X (e.g. adata.layers['counts'])")


def stored_values(matrix) -> np.ndarray:
    """The explicitly stored values of a dense or sparse block (what a counts check must see)."""
    return matrix.data if sp.issparse(matrix) else np.asarray(matrix)
