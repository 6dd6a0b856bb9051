"""An AnnData seen through a checkpoint: its rows in vocabulary space, and the tokenizer that
encodes them exactly as pretraining did (no masking, no RNG).

Rows are read in blocks, so a backed h5ad never loads whole. When the checkpoint's tokenizer
normalises genes per group (``tokenizer.stats_group``), the input's own batches play that
role: their normalisers come from the input in a first pass, so a new assay's capture bias is
removed the way it was for the training datasets. An in-memory AnnData is mapped into the
vocabulary once and both passes share it; a backed one is read twice rather than held.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from sc_fm.config import InputSettings
from sc_fm.errors import InputDataError
from sc_fm.pretrained.genes import GeneMapping
from sc_fm.pretrained.inputs import counts_matrix, require_counts
from sc_fm.tokenize import CellTokenizer, TokenizedCells


def fixed_conditions(tokenizer: CellTokenizer, conditions: dict[str, str] | None) -> dict[str, str]:
    """Validate ``{condition key: category}``; keys left out are dropped (``<unk>``) at inference."""
    conditions = conditions or {}
    for key, value in conditions.items():
        if key not in tokenizer.config.condition_keys:
            raise InputDataError(f"the checkpoint has no condition {key!r}", "conditions",
                                 f"use keys among {tokenizer.config.condition_keys} or leave it out")
        if value not in tokenizer.condition_vocabs[key]:
            known = ", ".join(tokenizer.condition_vocabs[key][:10])
            raise InputDataError(f"{value!r} is not a known {key} of the checkpoint", "conditions",
                                 f"use one of: {known}, or leave {key} out to drop it")
    return conditions


@dataclass
class InputCells:
    """``adata``'s cells ready to tokenise: ``blocks()`` of vocabulary-space counts, the input's
    ``tokenizer`` and each cell's normaliser group value (``groups``; None: global)."""

    adata: object
    mapping: GeneMapping
    tokenizer: CellTokenizer
    groups: np.ndarray | None
    conditions: dict[str, str]
    block_cells: int
    where: str
    _mapped: sp.csr_matrix | None = None
    _counts: object = None  # X, or layers["counts"] of a file without X

    @classmethod
    def build(cls, adata, mapping: GeneMapping, tokenizer: CellTokenizer, inputs: InputSettings,
              where: str = "input") -> "InputCells":
        """``inputs``: the batch column (the input's own normaliser groups), the fixed conditions
        and the block size."""
        cells = cls(adata, mapping, tokenizer, None, fixed_conditions(tokenizer, inputs.conditions),
                    inputs.block_cells, where)
        cells._counts = counts_matrix(adata, where)
        batch_key = inputs.batch_key
        if not getattr(adata, "isbacked", False):
            cells._mapped = mapping.to_vocab(cells._counts)
            require_counts(cells._mapped.data, where)
        if batch_key is not None and tokenizer.normalises_by_group:
            cells.groups = adata.obs[batch_key].astype(str).to_numpy()
            cells.tokenizer = tokenizer.with_group_normalisers(
                (rows, cells.groups[start:start + rows.shape[0]]) for start, rows in cells.blocks())
        return cells

    @property
    def n_cells(self) -> int:
        return self.adata.n_obs

    def blocks(self) -> Iterator[tuple[int, sp.csr_matrix]]:
        """``(start, count rows in vocabulary space)`` per block of cells, in order."""
        for start in range(0, self.n_cells, self.block_cells):
            stop = start + self.block_cells
            if self._mapped is not None:
                yield start, self._mapped[start:stop]
                continue
            rows = self.mapping.to_vocab(self._counts[start:stop])
            require_counts(rows.data, self.where)
            yield start, rows

    def tokenized_blocks(self) -> Iterator[tuple[int, TokenizedCells]]:
        """``(start, tokens)`` per block; the fixed ``conditions`` set condition tokens, others are dropped."""
        conditions = self.conditions
        for start, rows in self.blocks():
            n = rows.shape[0]
            yield start, self.tokenizer.encode_rows(
                rows.indptr, rows.indices, rows.data, {k: [v] * n for k, v in conditions.items()},
                None if self.groups is None else self.groups[start:start + n])

    def tokenize(self) -> TokenizedCells:
        """Every cell's tokens at once (for loops that revisit cells, such as fine-tuning)."""
        return TokenizedCells.concat([cells for _, cells in self.tokenized_blocks()])
