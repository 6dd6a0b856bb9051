"""Integrated gradients on the token input embeddings: how much each gene of a cell moves the
cell's embedding along its group's direction.

The attributed score of a cell in group ``g`` is ``<z, u_g>``, its embedding's coordinate on
the unit vector from the centroid of all cells to the centroid of ``g`` (``group_directions``).
Each token's input embedding ``gene + value [+ position]`` moves along a straight line from a
baseline, for the rank and bin schemes alike: ``masked`` (the default) starts every gene token as
``<mask>`` with the learned hidden-value embedding, what pretraining shows for a masked gene, so
that every cell starts from the same reference and both which genes a cell holds and their
values are attributed; ``hidden_value`` keeps the cell's genes and hides only their values, so
that only the values are attributed (the cell's gene set, which already tells groups apart, stays
in the baseline). A token's attribution is its share of the score's change (Sundararajan et al.
2017, midpoint rule); a cell's attributions sum to ``score(cell) - score(baseline)`` up to the
quadrature error.

Written out rather than through Captum: its convention that inputs and outputs share a batch
dimension does not fit packed cells, where inputs are tokens and outputs are cells.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from sc_fm.batch import CONDITION_IDS, CU_SEQLENS, GENE_IDS, HIDDEN_VALUE, MAX_SEQLEN, VALUES
from sc_fm.model import MaskedGeneTransformer
from sc_fm.pretrained import unmasked_batches
from sc_fm.tokenize import CellTokenizer, TokenizedCells
from sc_fm.vocab import MASK_ID, N_SPECIAL


def group_directions(embeddings: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """``[n_groups, d]`` unit vectors from the centroid of all cells to each group's centroid."""
    centre = embeddings.mean(axis=0)
    directions = np.stack([embeddings[codes == g].mean(axis=0) - centre for g in range(n_groups)])
    return directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)


def repeated(batch: dict, times: int) -> dict:
    """The model inputs of ``batch`` with its cells packed ``times`` times back to back."""
    n_tokens = len(batch[GENE_IDS])
    cu = batch[CU_SEQLENS].long()
    starts = [cu[:-1] + k * n_tokens for k in range(times)]
    cu_seqlens = torch.cat(starts + [cu[-1:] + (times - 1) * n_tokens])
    return {GENE_IDS: batch[GENE_IDS].repeat(times), VALUES: batch[VALUES].repeat(times),
            CU_SEQLENS: cu_seqlens.int(), MAX_SEQLEN: batch[MAX_SEQLEN],
            CONDITION_IDS: batch[CONDITION_IDS].repeat(times, 1)}


@contextmanager
def interpolated_embeddings(model: MaskedGeneTransformer, alphas: torch.Tensor, baseline: str,
                            captured: dict):
    """While open, the model's token embedding returns ``base + alpha * (input - base)`` per token
    (``base``: the token with its value hidden, and for ``masked`` its gene as ``<mask>`` too) as a
    leaf tensor that takes gradients; ``captured`` receives it (``point``) and ``input - base``
    (``delta``)."""
    def hook(module, args, output):
        gene_ids, values, positions = args
        if baseline == "masked":
            gene_ids = torch.where(gene_ids >= N_SPECIAL, MASK_ID, gene_ids)
        base = module.forward(gene_ids, torch.full_like(values, HIDDEN_VALUE), positions).detach()
        delta = output.detach() - base
        point = (base + alphas.to(base.dtype)[:, None] * delta).requires_grad_(True)
        captured.update(point=point, delta=delta)
        return point

    handle = model.embedding.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def integrated_gradients(model: MaskedGeneTransformer, batch: dict, directions: torch.Tensor,
                         steps: int, baseline: str = "masked") -> torch.Tensor:
    """``[T]`` attribution of every token of ``batch`` to its cell's score ``<z, directions[cell]>``
    (``directions``: ``[B, embedding_dim]``) from ``baseline`` (see the module doc); ``<cls>``
    tokens, the same at both ends of the path, get 0."""
    n_tokens = len(batch[GENE_IDS])
    path = repeated(batch, steps)
    alphas = ((torch.arange(steps, dtype=torch.float64) + 0.5) / steps).repeat_interleave(n_tokens)
    captured: dict = {}
    alphas = alphas.to(batch[VALUES].device)
    with interpolated_embeddings(model, alphas, baseline, captured), torch.enable_grad():
        score = (model.embed(path) * directions.repeat(steps, 1)).sum()
        (grad,) = torch.autograd.grad(score, captured["point"])
    return (grad * captured["delta"]).sum(-1).view(steps, n_tokens).mean(0).detach()


def attribute_cells(model: MaskedGeneTransformer, tokenizer: CellTokenizer, tokens: TokenizedCells,
                    directions: np.ndarray, steps: int, batch_cells: int, baseline: str = "masked",
                    progress: bool = True) -> sp.csr_matrix:
    """``[n_cells, n_genes]`` attributions (vocabulary gene order) of ``tokens``' cells, cell ``i``
    scored along ``directions[i]``; genes outside a cell's context are 0 (not stored)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_pass = max(1, batch_cells // steps)  # cells x steps copies go through the model at once
    parts = []
    bar = tqdm(total=len(tokens), unit="cells", desc="attributions", disable=not progress)
    for lo, hi, batch in unmasked_batches(tokenizer, tokens, per_pass, device):
        toward = torch.as_tensor(directions[lo:hi], dtype=torch.float32, device=device)
        parts.append(integrated_gradients(model, batch, toward, steps, baseline).float().cpu().numpy())
        bar.update(hi - lo)
    bar.close()
    model.train(was_training)
    per_token = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return _by_gene(tokens, per_token, tokenizer.vocab.n_genes)


def _by_gene(tokens: TokenizedCells, per_token: np.ndarray, n_genes: int) -> sp.csr_matrix:
    """Per-token attributions as a cells x vocabulary-genes CSR (``<cls>`` dropped)."""
    is_gene = tokens.gene_ids >= N_SPECIAL
    rows = np.repeat(np.arange(len(tokens)), tokens.lengths)[is_gene]
    genes = tokens.gene_ids[is_gene].astype(np.int64) - N_SPECIAL
    matrix = sp.csr_matrix((per_token[is_gene], (rows, genes)), shape=(len(tokens), n_genes))
    matrix.sort_indices()
    return matrix
