"""``explain``: one pass over an AnnData's cells with a checkpoint -> the attribution, marker and
perturbation tables (what ``scfm explain`` writes): ``explain(pretrained, adata, groupby)``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sc_fm.config import ExplainConfig, to_dict
from sc_fm.errors import InputDataError
from sc_fm.explain.attributions import attribute_cells, group_directions
from sc_fm.explain.genes import gene_table
from sc_fm.explain.markers import compare_with_markers, de_scores
from sc_fm.explain.perturbation import perturbation_table, resolve_genes
from sc_fm.pretrained import Pretrained, embed_tokens
from sc_fm.pretrained.inputs import require_obs_column


@dataclass
class Explanation:
    """The tables of one explanation. ``genes``: ranked attributions per group (``genes.csv``);
    ``markers``: overlap with scanpy's DE markers and the random control; ``perturbation``:
    in-silico deletion / top-of-range shifts; ``attributions``: cells x vocabulary genes for the
    attributed cells (``obs_names``); ``settings``: what produced them."""

    genes: pd.DataFrame
    markers: pd.DataFrame
    perturbation: pd.DataFrame
    attributions: sp.csr_matrix
    obs_names: pd.Index
    groupby: str
    settings: dict


def group_codes(adata, groupby: str, where: str) -> tuple[np.ndarray, list[str]]:
    """Each cell's group number and the group names; refused unless there are two groups."""
    require_obs_column(adata, groupby, "--groupby", where)
    column = adata.obs[groupby]
    names = (list(map(str, column.cat.categories[column.cat.categories.isin(column.unique())]))
             if isinstance(column.dtype, pd.CategoricalDtype) else sorted(map(str, column.unique())))
    if len(names) < 2:
        raise InputDataError(f".obs[{groupby!r}] has {len(names)} group ({', '.join(names)}); attributions "
                             f"toward a group need at least two to tell apart", where,
                             "choose a column with two or more groups (cell types, clusters) with --groupby")
    return pd.Index(names).get_indexer(column.astype(str)), names


def sample_cells(codes: np.ndarray, per_group: int | None, seed: int) -> np.ndarray:
    """Sorted cell positions: up to ``per_group`` cells of each group, drawn with ``seed``."""
    if per_group is None:
        return np.arange(len(codes))
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(codes == g))[:per_group] for g in np.unique(codes)]
    return np.sort(np.concatenate(chosen))


def explain(pretrained: Pretrained, adata, groupby: str, config: ExplainConfig | None = None,
            progress: bool = True, where: str = "input") -> Explanation:
    """Attributions toward each cell's ``groupby`` group, their comparison with DE markers, and
    the perturbation of ``config.perturb`` (or each group's ``perturb_top`` genes); see the
    module docs of ``sc_fm.explain``."""
    config = config or ExplainConfig()
    codes, names = group_codes(adata, groupby, where)
    vocab, model, tokenizer = pretrained.vocab, pretrained.model, pretrained.tokenizer
    symbols = list(vocab.symbols)
    perturbed = resolve_genes(config.perturb, vocab, symbols, "explain.perturb (--perturb)")
    cells = pretrained.input_cells(adata, config.input, where)
    mapping, batch_cells = cells.mapping, config.input.batch_cells
    chosen = sample_cells(codes, config.max_cells_per_group, config.seed)
    codes = codes[chosen]
    tokens = cells.tokenize().take(chosen)
    counts = sp.vstack([rows for _, rows in cells.blocks()]).tocsr()[chosen]
    embeddings = embed_tokens(model, tokenizer, tokens, batch_cells)
    directions = group_directions(embeddings, codes, len(names))
    attributions = attribute_cells(model, tokenizer, tokens, directions[codes], config.steps,
                                   batch_cells, config.baseline, progress)
    genes = gene_table(attributions, codes, names, vocab.gene_ids, symbols, config.top_k)
    de = de_scores(counts, codes, names, vocab.gene_ids, config.de_method)
    markers = compare_with_markers(genes, de, config.marker_ks, config.random_draws, config.seed)
    if not perturbed:
        top = genes.groupby("group", sort=False).head(config.perturb_top)["gene_id"]
        perturbed = [int(i) for i in vocab.lookup(list(dict.fromkeys(top)))]
    expressed = np.asarray((counts > 0).sum(axis=0)).ravel() > 0
    perturbation = perturbation_table(model, tokenizer, tokens, embeddings, codes, names, perturbed,
                                      expressed, symbols, batch_cells, progress)
    settings = {"groupby": groupby, "cells": int(len(chosen)), "cells_in_input": int(adata.n_obs),
                "genes_mapped": f"{mapping.n_mapped}/{mapping.n_input}", "scheme": tokenizer.config.scheme,
                "max_len": tokenizer.config.max_len,
                "score": "embedding coordinate on the unit vector from the centroid of all cells to the "
                         "group's",
                **{f"explain.{k}": v for k, v in to_dict(config).items()}}
    return Explanation(genes, markers, perturbation, attributions, adata.obs_names[chosen], groupby, settings)
