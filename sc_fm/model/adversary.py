"""A condition adversary on the cell embedding: no batch should be readable from it.

The decoder's per-condition offsets let the embedding leave the batch out; nothing forces it
to, and an encoder that sees which genes a protocol detects carries the protocol into the
bottleneck. Here one classifier per condition key (assay, dataset, a user's batch) predicts the
cell's category from the bottleneck mean through a gradient-reversal layer (Ganin & Lempitsky,
2015; scGPT's domain-adaptive objective): minimising its loss trains the classifiers, the
reversed gradient pushes the encoder towards embeddings from which no condition can be read.
Cells whose condition is ``<unk>`` (id 0: dropped or unknown) are not counted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; gradient multiplied by ``-scale`` backward."""
    return _ReverseGradient.apply(x, scale)


class ConditionAdversary(nn.Module):
    """``[B, latent]`` cell embeddings -> the mean cross-entropy of predicting each known condition."""

    def __init__(self, latent: int, condition_sizes: list[int]):
        super().__init__()
        self.classifiers = nn.ModuleList(
            nn.Sequential(nn.Linear(latent, latent), nn.GELU(), nn.Linear(latent, size)) for size in condition_sizes)

    @torch.no_grad()
    def grow(self, condition_sizes: list[int]) -> None:
        """New categories (adaptation) get fresh output rows; known rows keep their weights."""
        for classifier, size in zip(self.classifiers, condition_sizes):
            old = classifier[-1]
            new = nn.Linear(old.in_features, size).to(old.weight)
            nn.init.zeros_(new.weight)
            nn.init.zeros_(new.bias)
            new.weight[: old.out_features] = old.weight
            new.bias[: old.out_features] = old.bias
            classifier[-1] = new

    def loss(self, embedding: torch.Tensor, condition_ids: torch.Tensor) -> torch.Tensor:
        reversed_embedding = reverse_gradient(embedding)
        total = embedding.new_zeros((), dtype=torch.float32)
        for j, classifier in enumerate(self.classifiers):
            known = condition_ids[:, j] > 0
            logits = classifier(reversed_embedding[known]).float()
            # a key with no known category in the batch adds an exact 0, still on the graph
            total = total + (F.cross_entropy(logits, condition_ids[known, j], reduction="sum")
                             / max(int(known.sum()), 1))
        return total / max(len(self.classifiers), 1)
