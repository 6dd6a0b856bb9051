"""Real data shipped inside the package (no downloads at run time)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

MIXOLOGY_PROTOCOLS = ("celseq2", "dropseq")


def resource_path(*parts: str) -> Path:
    return Path(str(resources.files("sc_fm") / "resources" / Path(*parts)))


def load_sc_mixology(singlets_only: bool = True) -> "anndata.AnnData":  # noqa: F821
    """sc_mixology 3-cell-line benchmark: two protocols (``obs["batch"]``), three cell lines
    (``obs["cell_type"]``); raw integer counts in ``X``, genes = Ensembl IDs, union over protocols."""
    import anndata

    parts = []
    for protocol in MIXOLOGY_PROTOCOLS:
        folder = resource_path("sc_mixology_3cl")
        counts = pd.read_csv(folder / f"sc_{protocol}.count.csv.gz", index_col=0)
        meta = pd.read_csv(folder / f"sc_{protocol}.metadata.csv.gz", index_col=0)
        meta = meta.loc[counts.columns]
        obs = pd.DataFrame({
            "batch": protocol,
            "cell_type": meta["cell_line_demuxlet"].astype(str).values,
            "demuxlet_cls": meta["demuxlet_cls"].astype(str).values,
        }, index=[f"{protocol}_{c}" for c in counts.columns])
        part = anndata.AnnData(X=sp.csr_matrix(counts.to_numpy(dtype=np.float32).T), obs=obs,
                               var=pd.DataFrame(index=counts.index.astype(str)))
        parts.append(part)
    adata = anndata.concat(parts, join="outer", fill_value=0)
    adata.X = sp.csr_matrix(adata.X)
    if singlets_only:
        adata = adata[adata.obs["demuxlet_cls"] == "SNG"].copy()
    for col in ("batch", "cell_type"):
        adata.obs[col] = adata.obs[col].astype("category")
    return adata
