"""The simulated interferon stimulation: which counts it touches, how it scales, and refusals."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sc_fm.errors import InputDataError
from sc_fm.stimulation import BASELINE_FLOOR, stimulate

N_CELLS = 4000
SYMBOLS = ["ISG15", "MX1", "IFIT1", "CD3E", "FILLER"]  # three programme genes, two others


def _cells(isg_counts: int = 2) -> anndata.AnnData:
    """Cells of two depths (1,000 and 2,000 counts, alternating), each programme gene at
    ``isg_counts`` per 1,000 counts except IFIT1 (never measured), one cell type."""
    depth = np.where(np.arange(N_CELLS) % 2 == 0, 1000, 2000)
    counts = np.zeros((N_CELLS, len(SYMBOLS)), np.float32)
    counts[:, 0] = counts[:, 1] = isg_counts * depth / 1000
    counts[:, 3] = 100 * depth / 1000
    counts[:, 4] = depth - counts[:, :4].sum(axis=1)
    obs = pd.DataFrame({"cell_type": "T"}, index=[f"c{i}" for i in range(N_CELLS)])
    var = pd.DataFrame({"symbol": SYMBOLS}, index=[f"ENSG{i:011d}" for i in range(len(SYMBOLS))])
    return anndata.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)


def test_only_the_programme_genes_of_the_chosen_cells_gain_whole_counts():
    adata = _cells()
    chosen = np.arange(N_CELLS) < N_CELLS // 2
    out = stimulate(adata, chosen, "cell_type", seed=3)
    added = (out.X - adata.X).toarray()
    assert np.all(added >= 0) and np.array_equal(added, np.round(added))
    assert not added[~chosen].any() and not added[:, 3:].any()
    assert added[chosen][:, :3].sum(axis=0).min() > 0
    assert out.obs["stimulated"].tolist() == chosen.tolist()
    assert out.X.dtype == adata.X.dtype and np.array_equal(adata.X.toarray(), _cells().X.toarray())


def test_added_counts_scale_with_depth_and_unmeasured_genes_start_from_the_floor():
    adata = _cells()
    out = stimulate(adata, np.ones(N_CELLS, bool), "cell_type", seed=0)
    added = (out.X - adata.X).toarray()
    deep = np.arange(N_CELLS) % 2 == 1
    ratio = added[deep, :3].sum() / added[~deep, :3].sum()
    assert ratio == pytest.approx(2.0, rel=0.1)
    # IFIT1 is never measured: it is raised from BASELINE_FLOOR per median-depth cell, so its
    # mean gain per shallow cell (size 2/3) lies within the fold range's bounds times the floor
    shallow_gain = added[~deep, 2].mean()
    size = 1000 / 1500
    assert 0.5 * 2 * BASELINE_FLOOR * size <= shallow_gain <= 1.5 * 29 * BASELINE_FLOOR * size


def test_the_same_seed_repeats_and_another_does_not():
    adata = _cells()
    chosen = np.ones(N_CELLS, bool)
    first, again = (stimulate(adata, chosen, "cell_type", seed=1).X.toarray() for _ in range(2))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, stimulate(adata, chosen, "cell_type", seed=2).X.toarray())


def test_data_without_a_programme_gene_is_refused():
    adata = _cells()[:, 3:].copy()
    with pytest.raises(InputDataError, match=r"var\['symbol'\].*ISG15"):
        stimulate(adata, np.ones(N_CELLS, bool), "cell_type")
