"""The packed batch (cells back to back, ``cu_seqlens``) and views derived from it.

Packed is the one true form (what varlen attention consumes); ``to_padded`` derives the
``[B, L]`` view for backends that need one, and ``unpack`` the per-cell sequences.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sc_fm.batch import EXPRESSION_COUNTS, EXPRESSION_GENES, EXPRESSION_OFFSETS, HIDDEN_VALUE, IGNORE_INDEX
from sc_fm.tokenize.cells import TokenizedCells
from sc_fm.tokenize.masking import MaskedTokens
from sc_fm.vocab import N_SPECIAL, PAD_ID

TOKEN_KEYS = ("gene_ids", "values", "labels", "target_values")
CELL_KEYS = ("condition_ids", "cell_index")


def pack(cells: TokenizedCells, tokens: MaskedTokens, cell_index: Sequence[int]) -> dict:
    """The batch dict of the model contract from flat tokens and their cells."""
    if len(cell_index) != len(cells):
        raise ValueError(f"{len(cell_index)} cell indices for {len(cells)} cells")
    lengths = cells.lengths
    return {
        "gene_ids": torch.from_numpy(np.ascontiguousarray(tokens.gene_ids, np.int64)),
        "values": torch.from_numpy(np.ascontiguousarray(tokens.values, np.float32)),
        "cu_seqlens": torch.from_numpy(cells.offsets.astype(np.int32)),
        "max_seqlen": int(lengths.max(initial=0)),
        "condition_ids": torch.from_numpy(np.ascontiguousarray(cells.condition_ids, np.int64)),
        "labels": torch.from_numpy(np.ascontiguousarray(tokens.labels, np.int64)),
        "target_values": torch.from_numpy(np.ascontiguousarray(tokens.target_values, np.float32)),
        "cell_index": torch.as_tensor(np.asarray(cell_index, np.int64)),
        **({} if cells.expression is None else expression_targets(cells)),
    }


def expression_targets(cells: TokenizedCells) -> dict:
    """Each cell's whole count row, sparse, genes as token ids: the cell-level objective's target."""
    genes, counts = cells.expression.arrays
    return {EXPRESSION_OFFSETS: torch.from_numpy(cells.expression.offsets.astype(np.int64)),
            EXPRESSION_GENES: torch.from_numpy(genes.astype(np.int64) + N_SPECIAL),
            EXPRESSION_COUNTS: torch.from_numpy(np.ascontiguousarray(counts, np.float32))}


def to_padded(batch: dict) -> dict:
    """``[B, L]`` view: token keys padded (``<pad>``, hidden value, ignore targets) plus
    ``padding_mask`` (bool ``[B, L]``, True at padding, as ``key_padding_mask`` in PyTorch)."""
    cu = batch["cu_seqlens"].long()
    lengths = cu[1:] - cu[:-1]
    n, width = len(lengths), int(batch["max_seqlen"])
    rows = torch.repeat_interleave(torch.arange(n), lengths)
    cols = torch.arange(int(cu[-1])) - torch.repeat_interleave(cu[:-1], lengths)
    fills = {"gene_ids": PAD_ID, "values": HIDDEN_VALUE, "labels": IGNORE_INDEX,
             "target_values": float(IGNORE_INDEX)}
    out = {}
    for key, fill in fills.items():
        padded = torch.full((n, width), fill, dtype=batch[key].dtype)
        padded[rows, cols] = batch[key]
        out[key] = padded
    out["padding_mask"] = torch.arange(width)[None, :] >= lengths[:, None]
    out.update({key: batch[key] for key in CELL_KEYS})
    return out


def unpack(batch: dict) -> list[dict[str, torch.Tensor]]:
    """Per-cell sequences of every token key (inverse of packing)."""
    cu = batch["cu_seqlens"].tolist()
    return [{key: batch[key][lo:hi] for key in TOKEN_KEYS} for lo, hi in zip(cu[:-1], cu[1:])]
