"""One iterator of unmasked batches: tokenised cells through a model as at inference (no
masking, no RNG, eval mode), shared by embedding, explanation, fine-tuning's predictions and
the evaluator that runs during pretraining."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from tqdm.auto import tqdm

from sc_fm.batch import to_device
from sc_fm.model import MaskedGeneTransformer
from sc_fm.pretrained.cells import InputCells
from sc_fm.tokenize import CellTokenizer, TokenizedCells


def unmasked_batches(tokenizer: CellTokenizer, tokens: TokenizedCells, batch_cells: int, device: torch.device,
                     first_index: int = 0) -> Iterator[tuple[int, int, dict]]:
    """``(lo, hi, batch)`` for cells ``lo:hi`` of ``tokens``, packed unmasked and on ``device``;
    ``cell_index`` counts from ``first_index``."""
    for lo in range(0, len(tokens), batch_cells):
        hi = min(lo + batch_cells, len(tokens))
        batch = tokenizer.mask_and_pack(tokens[lo:hi], None, np.arange(first_index + lo, first_index + hi))
        yield lo, hi, to_device(batch, device)


@contextmanager
def evaluating(model: torch.nn.Module):
    """Eval mode without autograd for the block, the model's own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def embed_tokens(model: MaskedGeneTransformer, tokenizer: CellTokenizer, tokens: TokenizedCells,
                 batch_cells: int, first_index: int = 0) -> np.ndarray:
    """``[n_cells, embedding_dim]`` float32 embeddings of already tokenised cells."""
    with evaluating(model) as device:
        parts = [model.embed(batch).float().cpu().numpy()
                 for _, _, batch in unmasked_batches(tokenizer, tokens, batch_cells, device, first_index)]
    return np.concatenate(parts) if parts else np.zeros((0, model.embedding_dim), np.float32)


def embed_cells(model: MaskedGeneTransformer, cells: InputCells, batch_cells: int = 64,
                progress: bool = True) -> np.ndarray:
    """The model's embedding of every cell of ``cells``, read and tokenised block by block."""
    parts = []
    with tqdm(total=cells.n_cells, unit="cells", desc="embedding", disable=not progress) as bar:
        for start, tokens in cells.tokenized_blocks():
            parts.append(embed_tokens(model, cells.tokenizer, tokens, batch_cells, start))
            bar.update(len(tokens))
    return np.concatenate(parts) if parts else np.zeros((0, model.embedding_dim), np.float32)
