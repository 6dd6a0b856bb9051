"""Choose a corpus vocabulary from its pretraining sources: per source group, the most-detected
genes plus the most variable ones.

Most-detected genes alone miss the markers of rare populations (in PBMC, FCER1A of dendritic
cells and PPBP of platelets are detected in under 2% of cells, ranks 5,600 and 8,300), and the
most variable genes alone miss the housekeeping genes that anchor a cell's rank order. Each
group (a tissue, a protocol family) contributes both lists, so that one group's size cannot
crowd out another's genes. Only pretraining sources are read: a vocabulary chosen on the
evaluation cells would leak their genes into the checkpoint.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from sc_fm.errors import InputDataError
from sc_fm.vocab import GeneVocab


def detected_fraction(adata) -> pd.Series:
    """Fraction of cells with a non-zero count, per gene."""
    return pd.Series(np.asarray((adata.X > 0).mean(axis=0)).ravel(), index=adata.var_names)


def variable_genes(adata, n_genes: int, batch_key: str | None) -> list[str]:
    """scanpy's seurat_v3 ranking on raw counts (batch-aware where ``batch_key`` is given)."""
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=min(n_genes, adata.n_vars),
                                            batch_key=batch_key, inplace=False)
    table.index = adata.var_names
    return list(table[table["highly_variable"]].sort_values("highly_variable_rank").index)


def select_vocabulary(groups: dict[str, "anndata.AnnData"], reference: GeneVocab, n_detected: int,  # noqa: F821
                      n_variable: int, batch_key: str | None = None, name: str = "selected"
                      ) -> tuple[GeneVocab, pd.DataFrame]:
    """The union over ``groups`` (raw counts, ``var_names`` = IDs of ``reference``) of each group's
    ``n_detected`` most-detected and ``n_variable`` most variable genes, in ``reference`` order,
    with ``reference``'s symbols; and a table of what each group contributed."""
    chosen: set[str] = set()
    rows = []
    for label, adata in groups.items():
        unknown = int((reference.lookup(list(adata.var_names)) < 0).sum())
        if unknown:
            raise InputDataError(f"{unknown} of {adata.n_vars} genes are not IDs of the {reference.name} "
                                 "vocabulary", label, "map the group's genes to that vocabulary's IDs first")
        detected = list(detected_fraction(adata).sort_values(ascending=False, kind="stable").index[:n_detected])
        variable = variable_genes(adata, n_variable, batch_key if batch_key in adata.obs else None)
        own = set(detected) | set(variable)
        rows.append({"group": label, "cells": adata.n_obs, "genes": adata.n_vars, "most_detected": len(detected),
                     "most_variable": len(variable), "contributed": len(own), "new": len(own - chosen)})
        chosen |= own
    order = np.sort(reference.lookup(sorted(chosen)))
    vocab = GeneVocab([reference.gene_ids[i] for i in order], [reference.symbols[i] for i in order], name=name)
    return vocab, pd.DataFrame(rows)


def coverage(vocab: GeneVocab, genes: list[str]) -> dict[str, bool]:
    """Which of ``genes`` (IDs or symbols) the vocabulary holds."""
    return {g: bool(i >= 0) for g, i in zip(genes, vocab.lookup(genes))}
