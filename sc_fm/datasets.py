"""Real data shipped inside the package (no downloads at run time)."""

from __future__ import annotations

import os
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


PBMC_DIR_ENV = "SCFM_PBMC_DIR"
PBMC_EVALUATION = ("pbmc4k_10x_v2", "zheng_sorted_2140_10x_v1")  # never in a pretraining corpus
PBMC_PRETRAINING = ("zheng_donor_a_2896_10x_v1", "zheng_sorted_3426_10x_v1")  # configs/data/pbmc.yaml
PBMC_BATCH, PBMC_LABEL, PBMC_UNKNOWN = "chemistry", "cell_type", "unknown"
PBMC4K_LABELS = Path(__file__).resolve().parent.parent / "data" / "pbmc4k_labels" / "pbmc4k_cell_types.csv.gz"


def _pbmc_file(stem: str) -> "anndata.AnnData":  # noqa: F821
    """One PBMC file, from ``$SCFM_PBMC_DIR`` (the original labelled files) or the package (whose
    pbmc4k carries no labels: they are GPL-2 and live in the checkout's ``data/pbmc4k_labels``)."""
    import anndata

    from sc_fm.errors import InputDataError

    folder = os.environ.get(PBMC_DIR_ENV)
    path = Path(folder) / f"{stem}.h5ad" if folder else resource_path("pbmc", f"{stem}.h5ad")
    if not path.is_file():
        raise InputDataError(f"{path} does not exist", PBMC_DIR_ENV if folder else "sc_fm/resources/pbmc",
                             f"point {PBMC_DIR_ENV} at a folder holding {stem}.h5ad, or unset it to use the "
                             "shipped files")
    adata = anndata.read_h5ad(path)
    if PBMC_LABEL not in adata.obs:
        if not PBMC4K_LABELS.is_file():
            raise InputDataError(f"{stem} carries no {PBMC_LABEL} labels and {PBMC4K_LABELS} is missing", str(path),
                                 f"run from a checkout of the repository (its data/pbmc4k_labels), or set "
                                 f"{PBMC_DIR_ENV} to a folder of the original labelled files")
        labels = pd.read_csv(PBMC4K_LABELS, index_col=0)
        adata.obs = adata.obs.join(labels.reindex(adata.obs_names))
    return adata


def symbols_to_vocabulary(adata, vocab) -> "anndata.AnnData":  # noqa: F821
    """``adata`` with genes renamed to the vocabulary's IDs (``var["symbol"]`` keeps its own
    symbol); unmapped genes dropped and genes that name one vocabulary gene twice summed."""
    import anndata

    index = vocab.lookup(list(adata.var_names))
    kept = np.flatnonzero(index >= 0)
    ids, first = np.unique(index[kept], return_index=True)
    columns = np.searchsorted(ids, index[kept])
    projection = sp.csr_matrix((np.ones(len(kept), np.float32), (np.arange(len(kept)), columns)),
                               shape=(len(kept), len(ids)))
    counts = sp.csr_matrix(sp.csr_matrix(adata.X)[:, kept] @ projection)
    var = pd.DataFrame({"symbol": [str(s) for s in adata.var_names[kept[first]]]},
                       index=pd.Index([vocab.gene_ids[i] for i in ids], name="gene_id"))
    return anndata.AnnData(X=counts, obs=adata.obs.copy(), var=var)


def load_pbmc_cross_chemistry() -> "anndata.AnnData":  # noqa: F821
    """The real-tissue evaluation set: pbmc4k (10x 3' v2) with the FACS-sorted 2,140 (10x 3' v1),
    ``obs["chemistry"]`` the batch and ``obs["cell_type"]`` the label (CD4 T, CD8 T, B, NK,
    Monocyte/DC; ``unknown`` cells dropped), on the genes both files share: each file's symbols
    are mapped to GENCODE v44 IDs (``var_names``; ``var["symbol"]``) and the IDs joined. Raw
    counts. Held out of every pretraining corpus: never pretrain on it."""
    import anndata

    from sc_fm.vocab import default_vocab

    vocab = default_vocab()
    parts = [symbols_to_vocabulary(_pbmc_file(stem), vocab) for stem in PBMC_EVALUATION]
    adata = anndata.concat(parts, join="inner", merge="first", index_unique=None)
    adata = adata[(adata.obs[PBMC_LABEL].astype(str) != PBMC_UNKNOWN).to_numpy()].copy()
    adata.X = sp.csr_matrix(adata.X)
    adata.obs = adata.obs[["study", PBMC_BATCH, PBMC_LABEL]].astype("category")
    return adata


def load_pbmc_pretraining() -> "anndata.AnnData":  # noqa: F821
    """The PBMC pretraining sets of ``configs/data/pbmc.yaml`` (frozen donor A, sorted 3,426; 10x
    3' v1) on GENCODE v44 IDs (union of their genes, zeros where a file lacks one), ``obs["batch"]``
    the file: what the demo's vocabulary is chosen from, never the evaluation cells."""
    import anndata

    from sc_fm.vocab import default_vocab

    parts = {stem: symbols_to_vocabulary(_pbmc_file(stem), default_vocab()) for stem in PBMC_PRETRAINING}
    adata = anndata.concat(parts, join="outer", fill_value=0, label="batch", index_unique=None)
    adata.X = sp.csr_matrix(adata.X)
    return adata
