"""``explain``: one pass over an AnnData's cells with a checkpoint -> the attribution, marker and
perturbation tables (what ``Pretrained.explain`` returns and ``scfm explain`` writes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sc_fm.config import ExplainConfig, to_dict
from sc_fm.errors import InputDataError
from sc_fm.explain.attributions import attribute_cells, group_directions
from sc_fm.explain.genes import gene_table
from sc_fm.explain.markers import compare_with_markers, de_scores
from sc_fm.explain.perturbation import embed_tokens, perturbation_table, resolve_genes
from sc_fm.model import MaskedGeneTransformer
from sc_fm.pretrained.cells import InputCells
from sc_fm.pretrained.genes import GeneMapping
from sc_fm.pretrained.inputs import require_obs_column
from sc_fm.tokenize import CellTokenizer
from sc_fm.vocab import GeneVocab


class Checkpoint(Protocol):
    """What an explanation needs of a ``sc_fm.pretrained.Pretrained`` (which delegates here, so
    this module names the interface rather than importing the class)."""

    model: MaskedGeneTransformer
    tokenizer: CellTokenizer

    @property
    def vocab(self) -> GeneVocab: ...

    def gene_mapping(self, adata, min_gene_overlap: float, where: str) -> GeneMapping: ...

    def input_cells(self, adata, batch_key: str | None, mapping: GeneMapping | None,
                    block_cells: int = 1024, where: str = "input") -> InputCells: ...


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


def explain(pretrained: Checkpoint, adata, groupby: str, config: ExplainConfig | None = None,
            progress: bool = True, where: str = "input") -> Explanation:
    """Attributions toward each cell's ``groupby`` group, their comparison with DE markers, and
    the perturbation of ``config.perturb`` (or each group's ``perturb_top`` genes); see the
    module docs of ``sc_fm.explain``."""
    config = config or ExplainConfig()
    codes, names = group_codes(adata, groupby, where)
    mapping = pretrained.gene_mapping(adata, config.min_gene_overlap, where)
    vocab, model, tokenizer = pretrained.vocab, pretrained.model, pretrained.tokenizer
    symbols = list(vocab.symbols)
    perturbed = resolve_genes(config.perturb, vocab, symbols, "explain.perturb (--perturb)")
    cells = pretrained.input_cells(adata, config.batch_key, mapping, where=where)
    chosen = sample_cells(codes, config.max_cells_per_group, config.seed)
    codes = codes[chosen]
    tokens = cells.tokenize().take(chosen)
    counts = sp.vstack([rows for _, rows in cells.blocks()]).tocsr()[chosen]
    embeddings = embed_tokens(model, tokenizer, tokens, config.batch_cells)
    directions = group_directions(embeddings, codes, len(names))
    attributions = attribute_cells(model, tokenizer, tokens, directions[codes], config.steps,
                                   config.batch_cells, config.baseline, progress)
    genes = gene_table(attributions, codes, names, vocab.gene_ids, symbols, config.top_k)
    de = de_scores(counts, codes, names, vocab.gene_ids, config.de_method)
    markers = compare_with_markers(genes, de, config.marker_ks, config.random_draws, config.seed)
    if not perturbed:
        top = genes.groupby("group", sort=False).head(config.perturb_top)["gene_id"]
        perturbed = [int(i) for i in vocab.lookup(list(dict.fromkeys(top)))]
    expressed = np.asarray((counts > 0).sum(axis=0)).ravel() > 0
    perturbation = perturbation_table(model, tokenizer, tokens, embeddings, codes, names, perturbed,
                                      expressed, symbols, config.batch_cells, progress)
    settings = {"groupby": groupby, "cells": int(len(chosen)), "cells_in_input": int(adata.n_obs),
                "genes_mapped": f"{mapping.n_mapped}/{mapping.n_input}", "scheme": tokenizer.config.scheme,
                "max_len": tokenizer.config.max_len,
                "score": "embedding coordinate on the unit vector from the centroid of all cells to the "
                         "group's",
                **{f"explain.{k}": v for k, v in to_dict(config).items()}}
    return Explanation(genes, markers, perturbation, attributions, adata.obs_names[chosen], groupby, settings)
