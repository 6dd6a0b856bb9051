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


MIXTURES = ("cellmix1", "cellmix2", "cellmix3", "cellmix4", "cellmix5", "RNAmix_celseq2", "RNAmix_sortseq")


def _count_table(folder: str, stem: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(genes x cells counts, per-cell metadata in the counts' column order) of a shipped table."""
    path = resource_path(folder)
    counts = pd.read_csv(path / f"{stem}.count.csv.gz", index_col=0)
    meta = pd.read_csv(path / f"{stem}.metadata.csv.gz", index_col=0)
    return counts, meta.loc[counts.columns]


def _as_anndata(parts: list[tuple[pd.DataFrame, pd.DataFrame]]) -> "anndata.AnnData":  # noqa: F821
    import anndata

    adatas = [anndata.AnnData(X=sp.csr_matrix(counts.to_numpy(dtype=np.float32).T), obs=obs,
                              var=pd.DataFrame(index=counts.index.astype(str))) for counts, obs in parts]
    adata = anndata.concat(adatas, join="outer", fill_value=0)
    adata.X = sp.csr_matrix(adata.X)
    return adata


def load_sc_mixology(singlets_only: bool = True) -> "anndata.AnnData":  # noqa: F821
    """sc_mixology 3-cell-line benchmark: two protocols (``obs["batch"]``), three cell lines
    (``obs["cell_type"]``); raw integer counts in ``X``, genes = Ensembl IDs, union over protocols.
    The held-out evaluation set: never pretrain on it."""
    parts = []
    for protocol in MIXOLOGY_PROTOCOLS:
        counts, meta = _count_table("sc_mixology_3cl", f"sc_{protocol}")
        obs = pd.DataFrame({
            "batch": protocol,
            "cell_type": meta["cell_line_demuxlet"].astype(str).values,
            "demuxlet_cls": meta["demuxlet_cls"].astype(str).values,
        }, index=[f"{protocol}_{c}" for c in counts.columns])
        parts.append((counts, obs))
    adata = _as_anndata(parts)
    if singlets_only:
        adata = adata[adata.obs["demuxlet_cls"] == "SNG"].copy()
    for col in ("batch", "cell_type"):
        adata.obs[col] = adata.obs[col].astype("category")
    return adata


def load_sc_mixology_mixtures() -> "anndata.AnnData":  # noqa: F821
    """The sc_mixology mixture profiles (pools of cells, RNA mixtures) of the same three lines:
    ``obs["batch"]`` is the experiment; for pretraining only."""
    parts = []
    for name in MIXTURES:
        counts, _ = _count_table("sc_mixology_mixtures", name)
        parts.append((counts, pd.DataFrame({"batch": name}, index=[f"{name}_{c}" for c in counts.columns])))
    adata = _as_anndata(parts)
    adata.obs["batch"] = adata.obs["batch"].astype("category")
    return adata
