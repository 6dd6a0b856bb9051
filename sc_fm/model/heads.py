"""Output heads: masked gene identity, masked value, and the cell embedding.

The losses are evaluated only at masked positions (labels != IGNORE_INDEX), so the vocabulary-sized
gene logits are computed for ~15% of the tokens instead of all of them. A batch without
masked positions contributes exactly 0 (still attached to the graph, so every parameter
gets a gradient, zero or not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sc_fm.batch import IGNORE_INDEX


class GeneHead(nn.Module):
    """Hidden state -> logits over all tokens; the weight is the gene embedding when tied."""

    def __init__(self, d_model: int, n_tokens: int, tied_weight: nn.Parameter | None):
        super().__init__()
        self.decoder = nn.Linear(d_model, n_tokens)
        if tied_weight is not None:
            self.decoder.weight = tied_weight

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        where = (labels != IGNORE_INDEX).nonzero().squeeze(1)
        logits = self.decoder(hidden[where])
        return F.cross_entropy(logits.float(), labels[where], reduction="sum") / max(len(where), 1)


class ValueHead(nn.Module):
    """Hidden state -> value: logits over bins (``bin``) or one number (``continuous``)."""

    def __init__(self, d_model: int, value_encoding: str, n_bins: int):
        super().__init__()
        self.value_encoding = value_encoding
        self.decoder = nn.Linear(d_model, n_bins if value_encoding == "bin" else 1)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        where = (targets != IGNORE_INDEX).nonzero().squeeze(1)
        predicted = self.decoder(hidden[where]).float()
        if self.value_encoding == "bin":
            total = F.cross_entropy(predicted, targets[where].long(), reduction="sum")
        else:
            total = F.mse_loss(predicted.squeeze(1), targets[where], reduction="sum")
        return total / max(len(where), 1)


def pool_cells(hidden: torch.Tensor, cu_seqlens: torch.Tensor, cell_of_token: torch.Tensor,
               pooling: str) -> torch.Tensor:
    """``[T, d]`` -> ``[B, d]``: the ``<cls>`` state (first token of each cell) or the mean."""
    if pooling == "cls":
        return hidden[cu_seqlens[:-1].long()]
    n_cells = len(cu_seqlens) - 1
    sums = hidden.new_zeros(n_cells, hidden.shape[1]).index_add(0, cell_of_token, hidden)
    return sums / cu_seqlens.diff().unsqueeze(1).to(hidden.dtype)
