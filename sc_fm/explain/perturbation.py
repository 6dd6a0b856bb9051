"""In-silico perturbation, as Geneformer's deletion: change one gene in every cell that holds it
in its context and measure how the cell embedding moves (cosine distance), and toward which
group's centroid.

Two edits per gene: ``delete`` removes its token; ``top`` sets its value to the top of the
cell's range (the highest bin; for the rank scheme the cell's largest value, and the token
moves to the front, right after ``<cls>``, where the highest-ranked gene sits).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sc_fm.errors import InputDataError
from sc_fm.model import MaskedGeneTransformer
from sc_fm.tokenize import CellTokenizer, TokenizedCells
from sc_fm.vocab import N_SPECIAL, GeneVocab

MODES = ("delete", "top")
PERTURB_COLUMNS = ["gene_id", "symbol", "mode", "group", "n_cells", "cosine_shift", "own_group_change",
                   "toward", "toward_change", "status"]


def resolve_genes(names: list[str], vocab: GeneVocab, symbols: list[str], where: str) -> list[int]:
    """Vocabulary indices of ``names``: Ensembl IDs or symbols, the vocabulary's own or the display
    ``symbols`` (the shipped table's for a vocabulary of IDs only); unknown names are refused."""
    by_symbol = pd.Series(range(len(symbols)), index=[s.upper() for s in symbols])
    by_symbol = by_symbol[~by_symbol.index.duplicated(keep=False)]
    index = [i if i >= 0 else int(by_symbol.get(n.upper(), -1)) for n, i in zip(names, vocab.lookup(names))]
    unknown = [n for n, i in zip(names, index) if i < 0]
    if unknown:
        raise InputDataError(f"perturbed gene(s) {', '.join(unknown)} are not in the checkpoint's vocabulary "
                             f"({vocab.name}, {vocab.n_genes} genes)", where,
                             "name genes by Ensembl ID or by a symbol of the vocabulary "
                             "(its tokenizer/vocab.tsv)")
    return [int(i) for i in index]


def embed_tokens(model: MaskedGeneTransformer, tokenizer: CellTokenizer, tokens: TokenizedCells,
                 batch_cells: int) -> np.ndarray:
    """``[n_cells, embedding_dim]`` embeddings of already tokenised cells, in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts = []
    with torch.inference_mode():
        for lo in range(0, len(tokens), batch_cells):
            hi = min(lo + batch_cells, len(tokens))
            batch = tokenizer.mask_and_pack(tokens[lo:hi], None, np.arange(lo, hi))
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            parts.append(model.embed(batch).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(parts) if parts else np.zeros((0, model.embedding_dim), np.float32)


def edited(tokens: TokenizedCells, token_id: int, mode: str, tokenizer: CellTokenizer) -> TokenizedCells:
    """``tokens`` (every cell holding ``token_id`` once) with that token deleted or raised to the top."""
    hit = np.flatnonzero(tokens.gene_ids == token_id)
    starts = tokens.offsets[:-1]
    if mode == "delete":
        keep = np.ones(len(tokens.gene_ids), bool)
        keep[hit] = False
        return TokenizedCells(tokens.gene_ids[keep], tokens.values[keep],
                              tokens.offsets - np.arange(len(tokens.offsets)), tokens.condition_ids)
    values = tokens.values.copy()
    if tokenizer.config.scheme == "bin":
        values[hit] = tokenizer.config.n_bins - 1
        return TokenizedCells(tokens.gene_ids, values, tokens.offsets, tokens.condition_ids)
    values[hit] = np.maximum.reduceat(values, starts)
    key = np.arange(len(values), dtype=np.float64)
    key[hit] = starts + 0.5  # right after <cls>, before the old first gene
    order = np.argsort(key, kind="stable")
    return TokenizedCells(tokens.gene_ids[order], values[order], tokens.offsets, tokens.condition_ids)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of every row of ``a`` with every row of ``b``: ``[len(a), len(b)]``."""
    return _unit(a) @ _unit(b).T


def perturbation_table(model: MaskedGeneTransformer, tokenizer: CellTokenizer, tokens: TokenizedCells,
                       embeddings: np.ndarray, codes: np.ndarray, group_names: list[str], genes: list[int],
                       expressed: np.ndarray, symbols: list[str], batch_cells: int,
                       progress: bool = True) -> pd.DataFrame:
    """``PERTURB_COLUMNS``, one row per gene, edit and group of the edited cells.

    ``cosine_shift``: mean cosine distance between a cell's embedding before and after;
    ``own_group_change`` and ``toward_change``: mean change of the cosine between the cell and a
    group's centroid (both taken from the centroid of all cells), for its own group and for the
    group it moves toward most (``toward``). A gene no cell expresses, or that no context holds
    (all its cells hold more highly expressed genes), is a row with ``status`` saying so.
    """
    centre = embeddings.mean(axis=0)
    centroids = np.stack([embeddings[codes == g].mean(axis=0) for g in range(len(group_names))]) - centre
    before = _cosines(embeddings - centre, centroids)
    rows = []
    bar = tqdm(total=len(genes) * len(MODES), unit="edits", desc="perturbation", disable=not progress)
    for gene in genes:
        token_id = gene + N_SPECIAL
        holders = np.unique(np.repeat(np.arange(len(tokens)), tokens.lengths)[tokens.gene_ids == token_id])
        base = {"gene_id": tokenizer.vocab.gene_ids[gene], "symbol": symbols[gene]}
        if not len(holders):
            status = ("skipped: expressed in no cell" if not expressed[gene] else
                      "skipped: in no cell's context (more highly expressed genes fill it)")
            rows += [{**base, "mode": mode, "n_cells": 0, "status": status} for mode in MODES]
            bar.update(len(MODES))
            continue
        subset = tokens.take(holders)
        for mode in MODES:
            after = embed_tokens(model, tokenizer, edited(subset, token_id, mode, tokenizer), batch_cells)
            z = embeddings[holders]
            shift = 1.0 - np.sum(_unit(z) * _unit(after), axis=1)
            change = _cosines(after - centre, centroids) - before[holders]
            for g in np.unique(codes[holders]):
                mine = codes[holders] == g
                mean_change = change[mine].mean(axis=0)
                toward = int(np.argmax(mean_change))
                rows.append({**base, "mode": mode, "group": group_names[g], "n_cells": int(mine.sum()),
                             "cosine_shift": float(shift[mine].mean()),
                             "own_group_change": float(mean_change[g]),
                             "toward": group_names[toward], "toward_change": float(mean_change[toward]),
                             "status": "ok"})
            bar.update(1)
    bar.close()
    return pd.DataFrame(rows, columns=PERTURB_COLUMNS)
