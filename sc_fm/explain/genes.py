"""Per-cell attributions -> one ranked gene table per group (``genes.csv``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


GENE_COLUMNS = ["group", "gene_id", "symbol", "mean_attribution", "top_k_fraction", "cells_with_gene"]


def top_k_mask(attributions: sp.csr_matrix, k: int) -> np.ndarray:
    """Per stored entry: is it among its cell's ``k`` largest attributions (ties by gene order)?"""
    rows = np.repeat(np.arange(attributions.shape[0]), np.diff(attributions.indptr))
    order = np.lexsort((-attributions.data, rows))  # rows ascending, then attribution descending
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - attributions.indptr[rows[order]]
    return rank < k


def gene_table(attributions: sp.csr_matrix, codes: np.ndarray, group_names: list[str], gene_ids: list[str],
               symbols: list[str], top_k: int) -> pd.DataFrame:
    """``GENE_COLUMNS`` for every gene in at least one context of each group, best first per group:
    ``mean_attribution`` over the group's cells (0 where a cell's context lacks the gene) and the
    fraction of them with the gene among their ``top_k`` attributions."""
    top = attributions.copy()
    top.data = top_k_mask(attributions, top_k).astype(np.float32)
    present = attributions.copy()
    present.data = np.ones_like(present.data)
    members = sp.csr_matrix((np.ones(len(codes), np.float32), (codes, np.arange(len(codes)))),
                            shape=(len(group_names), len(codes)))
    sizes = np.asarray(members.sum(axis=1)).ravel()
    sums, tops, counts = (np.asarray((members @ m).todense()) for m in (attributions, top, present))
    parts = []
    for g, name in enumerate(group_names):
        genes = np.flatnonzero(counts[g] > 0)
        part = pd.DataFrame({"group": name, "gene_id": [gene_ids[i] for i in genes],
                             "symbol": [symbols[i] for i in genes],
                             "mean_attribution": sums[g, genes] / sizes[g],
                             "top_k_fraction": tops[g, genes] / sizes[g],
                             "cells_with_gene": counts[g, genes].astype(np.int64)})
        ranked = part.sort_values(["mean_attribution", "gene_id"], ascending=[False, True], kind="stable")
        parts.append(ranked)
    return pd.concat(parts, ignore_index=True)[GENE_COLUMNS]
