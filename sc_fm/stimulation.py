"""A simulated interferon stimulation: a response programme added to chosen cells' real counts.

Annotation is checked across a condition the reference never saw (a stimulated query labelled
from resting cells), the shift where classifiers keyed to a handful of genes break. Real
stimulated tissue is not among the shipped data, so the shift is simulated on real cells: the
interferon-stimulated genes below gain counts in the chosen cells, more in some cell types than
others and varying from cell to cell, while every other gene keeps its measured counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

# Interferon-stimulated genes induced in PBMC by type-I interferon (symbols).
INTERFERON_GENES = (
    "ISG15", "ISG20", "IFI6", "IFI27", "IFI35", "IFI44", "IFI44L", "IFIT1", "IFIT2", "IFIT3", "IFIT5",
    "IFITM1", "IFITM2", "IFITM3", "MX1", "MX2", "OAS1", "OAS2", "OAS3", "OASL", "RSAD2", "CMPK2",
    "HERC5", "HERC6", "XAF1", "LY6E", "BST2", "EPSTI1", "SAMD9", "SAMD9L", "PLSCR1", "STAT1", "STAT2",
    "IRF7", "IRF9", "IFIH1", "DDX58", "DDX60", "PARP9", "PARP14", "SP110", "TNFSF10", "GBP1",
    "GBP4", "CXCL10", "CCL8", "LGALS3BP", "USP18", "EIF2AK2", "TRIM22",
)
FOLD_RANGE = (3.0, 30.0)  # each gene's fold at full response, drawn log-uniformly
TYPE_RESPONSE_RANGE = (0.5, 1.5)  # how strongly each cell type responds
CELL_RESPONSE_SHAPE = 4.0  # gamma shape of the cell-to-cell response (mean 1)
BASELINE_FLOOR = 0.2  # counts per cell at median depth below which a gene is raised from this rate


def programme_columns(var: pd.DataFrame, var_names: pd.Index, genes: tuple[str, ...]) -> np.ndarray:
    """Column positions of ``genes``, matched on ``var["symbol"]`` when present, else on names."""
    names = var["symbol"].astype(str) if "symbol" in var else pd.Series(var_names.astype(str))
    return np.flatnonzero(names.isin(genes).to_numpy())


def stimulate(adata, cells: np.ndarray, label_key: str, seed: int = 0,
              genes: tuple[str, ...] = INTERFERON_GENES):
    """A copy of ``adata`` (raw counts) with the programme added to the ``cells`` (boolean mask)
    and ``obs["stimulated"]`` marking them. A gene's added counts in a cell are Poisson with mean
    depth x cell response x type response x (fold - 1) x the gene's resting rate (its mean count
    per median-depth cell over all cells, at least ``BASELINE_FLOOR``)."""
    from sc_fm.errors import InputDataError

    columns = programme_columns(adata.var, adata.var_names, genes)
    if columns.size == 0:
        raise InputDataError("none of the interferon programme's genes is measured",
                             "var_names / var['symbol']",
                             "name genes by symbol in var['symbol'] or var_names (e.g. ISG15, MX1, IFIT1)")
    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(adata.X)
    depth = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    size = depth / np.median(depth[depth > 0])
    resting = np.asarray(counts[:, columns].sum(axis=0), dtype=np.float64).ravel() / max(size.sum(), 1e-12)
    resting = np.maximum(resting, BASELINE_FLOOR)
    fold = np.exp(rng.uniform(*np.log(FOLD_RANGE), columns.size))
    types = adata.obs[label_key].astype(str).to_numpy()
    names = np.unique(types)
    type_response = dict(zip(names, rng.uniform(*TYPE_RESPONSE_RANGE, names.size)))
    rows = np.flatnonzero(cells)
    response = rng.gamma(CELL_RESPONSE_SHAPE, 1.0 / CELL_RESPONSE_SHAPE, rows.size)
    response *= np.array([type_response[t] for t in types[rows]])
    added = rng.poisson((size[rows] * response)[:, None] * ((fold - 1.0) * resting)[None, :])
    where = np.nonzero(added)
    increment = sp.csr_matrix((added[where], (rows[where[0]], columns[where[1]])), shape=counts.shape)
    out = adata.copy()
    out.X = (counts + increment).astype(counts.dtype)
    out.obs["stimulated"] = np.asarray(cells, bool)
    return out
