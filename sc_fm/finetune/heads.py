"""Task heads on the pretrained encoder: cell-type classifier with an optional batch adversary.

The adversary predicts the batch from the cell embedding through a gradient-reversal layer
(Ganin & Lempitsky, 2015): minimising its loss trains the head, while the reversed gradient
pushes the encoder towards embeddings from which the batch cannot be read.
"""

from __future__ import annotations

import torch
from torch import nn

from sc_fm.model.adversary import reverse_gradient


class Standardize(nn.Module):
    """``(x - mean) / scale`` with statistics fixed from the training cells' initial embeddings.

    Pretrained cell embeddings share a large common component and differ in small directions;
    standardising them (as a scaler before logistic regression would) lets the head learn in a
    few steps, and fixed statistics keep training and inference identical.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def fit(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(dim=0))
        self.scale.copy_(x.std(dim=0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


class CellClassifier(nn.Module):
    """``encoder.pool(batch)`` -> class logits (and batch logits when ``n_batches`` > 0)."""

    def __init__(self, encoder: nn.Module, n_classes: int, n_batches: int = 0):
        super().__init__()
        self.encoder = encoder
        d_model = encoder.config.d_model  # the pooled state: richer than the embedding's bottleneck
        self.standardize = Standardize(d_model)
        self.head = nn.Linear(d_model, n_classes)
        self.adversary = (nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, n_batches))
                          if n_batches > 0 else None)

    def forward(self, batch: dict, adversarial_scale: float = 1.0) -> dict[str, torch.Tensor]:
        embedding = self.standardize(self.encoder.pool(batch))
        out = {"embedding": embedding, "logits": self.head(embedding)}
        if self.adversary is not None:
            out["batch_logits"] = self.adversary(reverse_gradient(embedding, adversarial_scale))
        return out
