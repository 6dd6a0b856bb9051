"""A condition adversary on the cell embedding: no batch should be readable from it.

The decoder's per-condition offsets let the embedding leave the batch out; nothing forces it
to, and an encoder that sees which genes a protocol detects carries the protocol into the
bottleneck. Here one classifier per condition key (assay, dataset, a user's batch) predicts the
cell's category from the bottleneck mean through a gradient-reversal layer (Ganin & Lempitsky,
2015; scGPT's domain-adaptive objective): minimising its loss trains the classifiers, the
reversed gradient pushes the encoder towards embeddings from which no condition can be read.
Cells whose condition is ``<unk>`` (id 0: dropped or unknown) are not counted.

Two objectives for the encoder (``model.cell_adversary``):

- ``reversal``: the classifier's cross-entropy through gradient reversal. The encoder is pushed to
  make the classifier *wrong*, so a classifier that lags behind can be fooled by embeddings that
  still separate the batches, only the other way round.
- ``confusion`` (Tzeng et al., 2015): the classifier learns on the detached embedding; the
  encoder is trained, through a frozen copy of the classifier's weights, towards predictions
  equal to the batch's own category frequencies, which no embedding can game by flipping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


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

    def __init__(self, latent: int, condition_sizes: list[int], lr_scale: float = 1.0):
        super().__init__()
        self.lr_scale = lr_scale
        self.classifiers = nn.ModuleList(
            nn.Sequential(nn.Linear(latent, latent), nn.GELU(), nn.Linear(latent, size)) for size in condition_sizes)
        self._mark()

    def _mark(self) -> None:
        """The optimiser reads ``lr_scale`` off each parameter (``train.engines.param_groups``)."""
        for parameter in self.parameters():
            parameter.lr_scale = self.lr_scale

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
        self._mark()

    def loss(self, embedding: torch.Tensor, condition_ids: torch.Tensor, weight: float,
             objective: str = "reversal") -> tuple[torch.Tensor, torch.Tensor]:
        """``(readable, to_add)``: the classifiers' mean cross-entropy (how well the conditions can
        be read; logged), and the term the training loss adds for ``weight`` and ``objective``."""
        if objective == "reversal":
            readable = self._cross_entropy(reverse_gradient(embedding), condition_ids)
            return readable, weight * readable
        readable = self._cross_entropy(embedding.detach(), condition_ids)
        return readable, readable + weight * self._confusion(embedding, condition_ids)

    def _known(self, condition_ids: torch.Tensor):
        for j, classifier in enumerate(self.classifiers):
            known = condition_ids[:, j] > 0
            yield classifier, known, condition_ids[known, j]

    def _cross_entropy(self, embedding: torch.Tensor, condition_ids: torch.Tensor) -> torch.Tensor:
        total = embedding.new_zeros((), dtype=torch.float32)
        for classifier, known, target in self._known(condition_ids):
            logits = classifier(embedding[known]).float()
            # a key with no known category in the batch adds an exact 0, still on the graph
            total = total + F.cross_entropy(logits, target, reduction="sum") / max(int(known.sum()), 1)
        return total / max(len(self.classifiers), 1)

    def _confusion(self, embedding: torch.Tensor, condition_ids: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the frozen classifiers' predictions against the batch's category
        frequencies: gradient reaches the encoder only."""
        total = embedding.new_zeros((), dtype=torch.float32)
        for classifier, known, target in self._known(condition_ids):
            frozen = {name: value.detach() for name, value in classifier.named_parameters()}
            logits = functional_call(classifier, frozen, (embedding[known],)).float()
            prior = torch.bincount(target, minlength=logits.shape[1]).to(logits) / max(int(known.sum()), 1)
            total = total - (F.log_softmax(logits, dim=-1) * prior).sum() / max(int(known.sum()), 1)
        return total / max(len(self.classifiers), 1)
