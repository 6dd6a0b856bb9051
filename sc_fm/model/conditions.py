"""Condition tokens (assay, dataset, ...): one per key, placed before each cell's ``<cls>``.

Each key has its own table whose row 0 is ``<unk>``; dropping a condition at inference is
simply id 0. The tokens are inserted into the packed tensor by index arithmetic on
``cu_seqlens`` (cell ``b`` shifts right by ``C * (b + 1)`` tokens), so no padding appears.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sc_fm.model.attention import PackedCells


class ConditionEmbedding(nn.Module):
    """``condition_ids [B, C]`` -> ``[B, C, d]``, one embedding table per key."""

    def __init__(self, condition_sizes: list[int], d_model: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(size, d_model) for size in condition_sizes)

    @property
    def n_keys(self) -> int:
        return len(self.tables)

    @torch.no_grad()
    def grow(self, condition_sizes: list[int]) -> None:
        """Append rows for new categories (adaptation to new batches): each starts as the
        ``<unk>`` row, so a new batch is first seen as an unknown condition."""
        for j, size in enumerate(condition_sizes):
            old = self.tables[j]
            if size < old.num_embeddings:
                raise ValueError(f"condition table {j} cannot shrink from {old.num_embeddings} to {size}")
            new = nn.Embedding(size, old.embedding_dim).to(old.weight)
            new.weight[: old.num_embeddings] = old.weight
            new.weight[old.num_embeddings:] = old.weight[0]
            self.tables[j] = new

    def forward(self, condition_ids: torch.Tensor) -> torch.Tensor:
        return torch.stack([table(condition_ids[:, j]) for j, table in enumerate(self.tables)], dim=1)


@dataclass
class ConditionedPack:
    """The packed sequence with condition tokens in front of every cell."""

    x: torch.Tensor  # [T + B*C, d]
    cells: PackedCells  # the layout of ``x``
    token_rows: torch.Tensor  # [T]: row of each original token in ``x``


def prepend_conditions(tokens: torch.Tensor, conditions: torch.Tensor,
                       cells: PackedCells) -> ConditionedPack:
    """Insert ``conditions [B, C, d]`` before each cell of ``tokens [T, d]`` (laid out by ``cells``)."""
    n_cells, n_keys, d_model = conditions.shape
    n_tokens = tokens.shape[0]
    shift = n_keys * torch.arange(n_cells + 1, device=tokens.device)
    cu_seqlens = (cells.cu_seqlens.long() + shift).to(cells.cu_seqlens.dtype)
    token_rows = torch.arange(n_tokens, device=tokens.device) + shift[1:][cells.cell_of_token]
    condition_rows = cu_seqlens[:-1].long().unsqueeze(1) + torch.arange(n_keys, device=tokens.device)
    source = torch.empty(n_tokens + n_cells * n_keys, dtype=torch.long, device=tokens.device)
    source[token_rows] = torch.arange(n_tokens, device=tokens.device)
    source[condition_rows.flatten()] = n_tokens + torch.arange(n_cells * n_keys, device=tokens.device)
    x = torch.cat([tokens, conditions.reshape(-1, d_model)]).index_select(0, source)
    return ConditionedPack(x, PackedCells(cu_seqlens, cells.max_seqlen + n_keys), token_rows)
