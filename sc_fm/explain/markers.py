"""The check against known biology: each group's top attributed genes beside the markers that
``scanpy.tl.rank_genes_groups`` finds on the same cells, and beside random genes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sc_fm.config import CP10K

MARKER_COLUMNS = ["group", "k", "overlap", "random_overlap", "random_sd", "spearman", "n_genes"]


def de_scores(counts: sp.csr_matrix, codes: np.ndarray, group_names: list[str], gene_ids: list[str],
              method: str) -> pd.DataFrame:
    """``rank_genes_groups`` (one group against the rest) on depth-normalised log counts:
    columns ``group``, ``gene_id``, ``score``, genes expressed in the cells only; a group of one
    cell has no test and no rows."""
    import anndata
    import scanpy as sc

    expressed = np.flatnonzero(np.asarray((counts > 0).sum(axis=0)).ravel() > 0)
    obs = pd.DataFrame({"group": pd.Categorical([group_names[c] for c in codes], categories=group_names)})
    adata = anndata.AnnData(sp.csr_matrix(counts[:, expressed], dtype=np.float32), obs=obs,
                            var=pd.DataFrame(index=[gene_ids[i] for i in expressed]))
    sc.pp.normalize_total(adata, target_sum=CP10K)
    sc.pp.log1p(adata)
    sizes = np.bincount(codes, minlength=len(group_names))
    testable = [name for name, size in zip(group_names, sizes) if size >= 2]  # a test needs 2 cells
    sc.tl.rank_genes_groups(adata, "group", groups=testable, method=method, n_genes=adata.n_vars,
                            use_raw=False)
    table = sc.get.rank_genes_groups_df(adata, group=None)
    table = table.rename(columns={"names": "gene_id", "scores": "score"})
    return table[["group", "gene_id", "score"]].astype({"group": str})


def overlap_at_k(ranked: list[str], reference: list[str], k: int) -> float:
    """Fraction of ``ranked``'s first ``k`` genes among ``reference``'s first ``k`` (precision at k)."""
    return len(set(ranked[:k]) & set(reference[:k])) / k


def random_overlap(pool: list[str], reference: list[str], k: int, draws: int,
                   rng: np.random.Generator) -> tuple[float, float]:
    """Mean and sd of ``overlap_at_k`` for ``k`` genes drawn at random from ``pool`` (the control)."""
    hits = np.isin(np.asarray(pool), np.asarray(reference[:k]))
    size = min(k, len(pool))
    found = np.array([hits[rng.choice(len(pool), size, replace=False)].sum() / k for _ in range(draws)])
    return float(found.mean()), float(found.std())


def compare_with_markers(genes: pd.DataFrame, de: pd.DataFrame, ks: list[int], draws: int,
                         seed: int) -> pd.DataFrame:
    """``MARKER_COLUMNS`` per group and k: overlap of the top-k attributed genes with the top-k
    up-regulated DE genes, the random control drawn from the genes the group's cells hold in
    their contexts (what the attribution could have picked), and the Spearman correlation of
    attribution and DE score over those genes."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    rows = []
    for group, part in genes.groupby("group", sort=False):
        ranked = part["gene_id"].tolist()
        reference = de[de["group"] == group].sort_values("score", ascending=False, kind="stable")
        if reference.empty:
            continue
        scores = reference.set_index("gene_id")["score"].reindex(ranked)
        known = scores.notna().to_numpy()
        rho = (spearmanr(part["mean_attribution"].to_numpy()[known], scores.to_numpy()[known]).statistic
               if known.sum() > 2 else float("nan"))
        top = reference["gene_id"].tolist()
        for k in ks:
            mean, sd = random_overlap(ranked, top, k, draws, rng)
            rows.append({"group": group, "k": k, "overlap": overlap_at_k(ranked, top, k),
                         "random_overlap": mean, "random_sd": sd, "spearman": float(rho),
                         "n_genes": len(ranked)})
    return pd.DataFrame(rows, columns=MARKER_COLUMNS)
