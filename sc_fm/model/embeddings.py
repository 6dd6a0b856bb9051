"""Token inputs: gene identity + expression value (+ position in the cell for ranked input).

A hidden value (``-1.0`` in the batch: masked positions and ``<cls>``) has its own learned
embedding, so the model can tell "value unknown" from any real value.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sc_fm.batch import HIDDEN_VALUE


class BinValueEmbedding(nn.Module):
    """Bins ``0..n_bins-1`` as rows of a table; row ``n_bins`` is the hidden value."""

    def __init__(self, n_bins: int, d_model: int):
        super().__init__()
        self.n_bins = n_bins
        self.table = nn.Embedding(n_bins + 1, d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        index = torch.where(values == HIDDEN_VALUE, self.n_bins, values.long())
        return self.table(index)


class ContinuousValueEmbedding(nn.Module):
    """A two-layer MLP of the scalar value; a learned vector stands in for a hidden value."""

    def __init__(self, d_model: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.hidden = nn.Parameter(torch.zeros(d_model))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        encoded = self.mlp(values.unsqueeze(-1).to(self.hidden.dtype))
        return torch.where((values == HIDDEN_VALUE).unsqueeze(-1), self.hidden, encoded)


def sinusoidal_positions(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """The fixed sin/cos encoding of Vaswani et al.; no parameters, no length limit."""
    half = (d_model + 1) // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / half)
    angles = positions.float().unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[..., :d_model]


class TokenEmbedding(nn.Module):
    """``gene(id) + value(v) [+ sinusoid(position in cell)]`` for every packed token."""

    def __init__(self, n_tokens: int, d_model: int, value_encoding: str, n_bins: int,
                 positional: bool):
        super().__init__()
        self.gene = nn.Embedding(n_tokens, d_model)
        self.value = (BinValueEmbedding(n_bins, d_model) if value_encoding == "bin"
                      else ContinuousValueEmbedding(d_model))
        self.positional = positional

    @torch.no_grad()
    def set_gene_rows(self, first: int, weights: torch.Tensor) -> None:
        """Rows ``first..first+len(weights)`` of the gene table (a data-derived start); the rows
        before them (special tokens) keep their own."""
        self.gene.weight[first:first + len(weights)] = weights.to(self.gene.weight)

    def forward(self, gene_ids: torch.Tensor, values: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
        x = self.gene(gene_ids) + self.value(values)
        if self.positional:
            x = x + sinusoidal_positions(positions, x.shape[-1]).to(x.dtype)
        return x
