"""The batch contract between tokenizer, model, engine and benchmarks, defined once.

A batch is a dict of tensors over packed cells (no padding): ``gene_ids`` and ``values``
flattened over cells (``[T]``), ``cu_seqlens`` (``int32 [B+1]``) and ``max_seqlen`` for packed
attention, ``condition_ids`` (``[B, C]``, 0 = ``<unk>``/dropped), ``labels`` and
``target_values`` holding :data:`IGNORE_INDEX` wherever nothing is predicted, and
``cell_index`` (``[B]``, position in the store). A padded view is derived from it.
"""

from __future__ import annotations

from typing import Any

GENE_IDS = "gene_ids"
VALUES = "values"
CU_SEQLENS = "cu_seqlens"
MAX_SEQLEN = "max_seqlen"
CONDITION_IDS = "condition_ids"
LABELS = "labels"
TARGET_VALUES = "target_values"
CELL_INDEX = "cell_index"

# Each cell's whole count row (vocabulary gene index, raw count), sparse over cells: the
# target of the cell-level objective (present when the model has one).
EXPRESSION_OFFSETS = "expression_offsets"
EXPRESSION_GENES = "expression_genes"
EXPRESSION_COUNTS = "expression_counts"

INPUT_KEYS = (GENE_IDS, VALUES, CU_SEQLENS, MAX_SEQLEN, CONDITION_IDS)
EXPRESSION_KEYS = (EXPRESSION_OFFSETS, EXPRESSION_GENES, EXPRESSION_COUNTS)
TARGET_KEYS = (LABELS, TARGET_VALUES)

# Labels and value targets at positions that carry no loss (PyTorch's cross-entropy default).
IGNORE_INDEX = -100
# An input value the model may not see: at ``<cls>``, and where masking hid it.
HIDDEN_VALUE = -1.0

# The model's output losses: the total, then its parts (summed with their weights).
LOSS = "loss"
GENE_LOSS = "gene_loss"
VALUE_LOSS = "value_loss"
EXPRESSION_LOSS = "expression_loss"  # the cell-level objective (reconstruction + KL), weighted into LOSS
ADVERSARY_LOSS = "adversary_loss"  # the condition adversary's cross-entropy (its gradient is reversed)
MIXING_LOSS = "mixing_loss"  # distance to mutual nearest neighbours in other batches (model/mixing.py)
LOSS_NAMES = (LOSS, GENE_LOSS, VALUE_LOSS, EXPRESSION_LOSS, ADVERSARY_LOSS, MIXING_LOSS)


def to_device(batch: dict[str, Any], device, non_blocking: bool = False) -> dict[str, Any]:
    """The batch with every tensor on ``device`` (``max_seqlen``, an int, stays as it is);
    ``non_blocking`` overlaps the copy from pinned memory with the step (training)."""
    return {k: v.to(device, non_blocking=non_blocking) if hasattr(v, "to") else v for k, v in batch.items()}
