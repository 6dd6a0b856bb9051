"""Masked-gene objective: choose positions, hide genes (BERT 80/10/10) or values.

``bert``: each gene position is selected with probability ``mask_ratio``; the label is the
original gene token. Of the selected, 80% become ``<mask>`` with the value hidden (its
original value becomes a value target), 10% a random gene and 10% stay as they are (both
keep their value). ``value``: gene identities stay, selected values are hidden and become
value targets. The ``<cls>`` position is never selected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sc_fm.batch import HIDDEN_VALUE, IGNORE_INDEX
from sc_fm.vocab import MASK_ID, N_SPECIAL


@dataclass(frozen=True)
class MaskedTokens:
    gene_ids: np.ndarray  # int64 [T], inputs
    values: np.ndarray  # float32 [T], inputs (-1 hidden)
    labels: np.ndarray  # int64 [T], original gene at gene-masked positions, else -100
    target_values: np.ndarray  # float32 [T], original value where hidden by masking, else -100


def unmasked(gene_ids: np.ndarray, values: np.ndarray) -> MaskedTokens:
    return MaskedTokens(gene_ids, values, np.full(gene_ids.shape, IGNORE_INDEX, np.int64),
                        np.full(values.shape, IGNORE_INDEX, np.float32))


def mask_tokens(gene_ids: np.ndarray, values: np.ndarray, mode: str, ratio: float, n_tokens: int,
                rng: np.random.Generator) -> MaskedTokens:
    """Apply the masking rule of ``mode`` ("bert" or "value") to flat tokens."""
    selected = (rng.random(gene_ids.shape, dtype=np.float32) < ratio) & (gene_ids >= N_SPECIAL)
    at = np.flatnonzero(selected)
    out = unmasked(gene_ids.astype(np.int64), values.copy())  # int64: what the packed batch holds
    if mode == "value":
        out.target_values[at] = values[at]
        out.values[at] = HIDDEN_VALUE
        return out
    out.labels[at] = gene_ids[at]
    action = rng.random(len(at), dtype=np.float32)
    to_mask = at[action < 0.8]
    to_random = at[(action >= 0.8) & (action < 0.9)]
    out.gene_ids[to_mask] = MASK_ID
    out.target_values[to_mask] = values[to_mask]
    out.values[to_mask] = HIDDEN_VALUE
    out.gene_ids[to_random] = rng.integers(N_SPECIAL, n_tokens, size=len(to_random))
    return out
