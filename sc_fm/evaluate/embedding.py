"""Cells of an AnnData -> ``X_scfm`` with a pretrained checkpoint, exactly as pretraining tokenised.

Rows are read in blocks (a backed h5ad never loads whole), mapped into the vocabulary,
tokenised with the checkpoint's tokenizer (no masking, no RNG) and embedded in batches.
When the tokenizer normalises genes per group (``stats_group``), the input's own batches
play that role: their normalisers are computed from the input in a first pass, so a new
assay's capture bias is removed the way it was for the training datasets.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from sc_fm.errors import InputDataError
from sc_fm.evaluate.genes import GeneMapping
from sc_fm.evaluate.inputs import require_counts
from sc_fm.stats import GeneStatsAccumulator
from sc_fm.store import GLOBAL_GROUP
from sc_fm.tokenize import CellTokenizer
from sc_fm.tokenize.normalisers import GLOBAL_VALUE

EMBEDDING_KEY = "X_scfm"


def count_blocks(adata, mapping: GeneMapping, block_cells: int, where: str) -> Iterator[tuple[int, object]]:
    """``(start, rows in vocabulary space)`` per block of ``adata.X`` (in memory or backed)."""
    for start in range(0, adata.n_obs, block_cells):
        rows = mapping.to_vocab(adata.X[start:start + block_cells])
        require_counts(rows.data, where)
        yield start, rows


def is_batch_aware(tokenizer: CellTokenizer) -> bool:
    return tokenizer.config.stats_group not in (GLOBAL_GROUP, "none")


def with_input_normalisers(tokenizer: CellTokenizer, adata, mapping: GeneMapping, batch_key: str,
                           block_cells: int, where: str) -> CellTokenizer:
    """A copy of ``tokenizer`` whose ``stats_group`` normalisers are the input's per-batch medians
    (a gene seen in fewer than ``min_group_cells`` of a batch's cells keeps the global one)."""
    groups = adata.obs[batch_key].astype(str).to_numpy()
    accumulators = {value: GeneStatsAccumulator(tokenizer.vocab.n_genes) for value in np.unique(groups)}
    for start, rows in count_blocks(adata, mapping, block_cells, where):
        block_groups = groups[start:start + rows.shape[0]]
        for value in np.unique(block_groups):
            part = rows[block_groups == value]
            accumulators[value].update(part.indptr, part.indices, part.data)
    global_median = tokenizer.normalisers[GLOBAL_GROUP][GLOBAL_VALUE]
    per_batch = {}
    for value, acc in accumulators.items():
        stats = acc.finish()
        trusted = (stats.n_expr >= tokenizer.config.min_group_cells) & np.isfinite(stats.nonzero_median)
        per_batch[value] = np.where(trusted, stats.nonzero_median, global_median).astype(np.float32)
    normalisers = {GLOBAL_GROUP: tokenizer.normalisers[GLOBAL_GROUP], tokenizer.config.stats_group: per_batch}
    return CellTokenizer(tokenizer.config, tokenizer.vocab, normalisers, tokenizer.condition_vocabs)


def fixed_conditions(tokenizer: CellTokenizer, conditions: dict[str, str] | None) -> dict[str, str]:
    """Validate ``{condition key: category}``; keys left out are dropped (``<unk>``) at inference."""
    conditions = conditions or {}
    for key, value in conditions.items():
        if key not in tokenizer.config.condition_keys:
            raise InputDataError(f"the checkpoint has no condition {key!r}", "--condition",
                                 f"use keys among {tokenizer.config.condition_keys} or leave it out")
        if value not in tokenizer.condition_vocabs[key]:
            known = ", ".join(tokenizer.condition_vocabs[key][:10])
            raise InputDataError(f"{value!r} is not a known {key} of the checkpoint", "--condition",
                                 f"use one of: {known}, or leave {key} out to drop it")
    return conditions


def inference_tokenizer(tokenizer: CellTokenizer, adata, mapping: GeneMapping, batch_key: str | None,
                        block_cells: int = 1024,
                        where: str = "input") -> tuple[CellTokenizer, np.ndarray | None]:
    """The tokenizer to embed ``adata`` with, and each cell's normaliser group value (None: global).

    Batch-aware tokenizers get the input's per-batch normalisers when ``batch_key`` is given."""
    if batch_key is None or not is_batch_aware(tokenizer):
        return tokenizer, None
    return (with_input_normalisers(tokenizer, adata, mapping, batch_key, block_cells, where),
            adata.obs[batch_key].astype(str).to_numpy())


@torch.inference_mode()
def embed_counts(model: torch.nn.Module, tokenizer: CellTokenizer, adata, mapping: GeneMapping,
                 group_values: np.ndarray | None = None, conditions: dict[str, str] | None = None,
                 block_cells: int = 1024, batch_cells: int = 64, progress: bool = True,
                 where: str = "input") -> np.ndarray:
    """``[n_obs, d]`` float32 cell embeddings of ``adata`` (rows in order); deterministic.

    ``tokenizer``/``group_values`` come from ``inference_tokenizer``; ``conditions`` fixes
    condition tokens, the others are dropped."""
    conditions = fixed_conditions(tokenizer, conditions)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts = []
    bar = tqdm(total=adata.n_obs, unit="cells", desc="embedding", disable=not progress)
    for start, rows in count_blocks(adata, mapping, block_cells, where):
        n = rows.shape[0]
        cells = tokenizer.encode_rows(
            rows.indptr, rows.indices, rows.data, {k: [v] * n for k, v in conditions.items()},
            None if group_values is None else group_values[start:start + n])
        for lo in range(0, n, batch_cells):
            hi = min(lo + batch_cells, n)
            batch = tokenizer.mask_and_pack(cells[lo:hi], None, np.arange(start + lo, start + hi))
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            parts.append(model.embed(batch).float().cpu().numpy())
            bar.update(hi - lo)
    bar.close()
    model.train(was_training)
    return np.concatenate(parts) if parts else np.zeros((0, model.config.d_model), np.float32)
