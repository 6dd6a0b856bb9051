"""The cell-level objective: a cell's whole expression decoded from its embedding alone.

The masked-token heads only ask each token for its own gene; nothing there asks the pooled
cell state to carry the cell. Here it must: the pooled state passes a variational bottleneck
(a mean and a log-variance; the mean is the cell embedding, a sample is decoded while
training) and a linear map to log-rates of every gene of the vocabulary. Each condition
category (assay, dataset, a user's batch) adds its own per-gene offsets, so what a condition
explains need not be in the embedding — scVI's principle on a transformer encoder, with
scVI's likelihood: negative binomial with the cell's library size and a dispersion per gene
(``nb``), or MSE on log1p(counts per 10k) (``mse``). The KL term pulls the bottleneck towards
N(0, I), which is what keeps out of it the information the decoder gets anyway.

Losses are summed over genes (and latent dimensions) per cell, as in scVI's ELBO, then divided
by the batch's mean number of expressed genes, so the scale does not depend on the vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sc_fm.config import CP10K


class ExpressionDecoder(nn.Module):
    """Pooled cell state ``[B, d]`` -> latent mean ``[B, latent]``; losses against the full counts."""

    def __init__(self, d_model: int, n_outputs: int, condition_sizes: list[int], likelihood: str,
                 latent: int):
        super().__init__()
        self.likelihood = likelihood
        self.mean = nn.Linear(d_model, latent)
        self.log_var = nn.Linear(d_model, latent)
        self.rates = nn.Linear(latent, n_outputs)
        self.offsets = nn.ModuleList(nn.Embedding(size, n_outputs) for size in condition_sizes)
        self.log_theta = nn.Parameter(torch.zeros(n_outputs))

    def reset_parameters(self) -> None:
        """Offsets start at 0 (a condition explains nothing yet); the log-variance at -2."""
        for table in self.offsets:
            nn.init.zeros_(table.weight)
        nn.init.zeros_(self.log_var.weight)
        nn.init.constant_(self.log_var.bias, -2.0)

    @torch.no_grad()
    def grow(self, condition_sizes: list[int]) -> None:
        """New condition categories (adaptation) start with no offsets, like ``<unk>``."""
        for j, size in enumerate(condition_sizes):
            old = self.offsets[j]
            new = nn.Embedding(size, old.embedding_dim).to(old.weight)
            new.weight[: old.num_embeddings] = old.weight
            new.weight[old.num_embeddings:] = old.weight[0]
            self.offsets[j] = new

    def log_rates(self, z: torch.Tensor, condition_ids: torch.Tensor) -> torch.Tensor:
        out = self.rates(z)
        for j, table in enumerate(self.offsets):
            out = out + table(condition_ids[:, j])
        return out.float()

    def loss(self, pooled: torch.Tensor, condition_ids: torch.Tensor, counts: torch.Tensor,
             kl_weight: float) -> torch.Tensor:
        """``counts [B, n_outputs]`` dense raw counts; returns the per-cell loss, batch mean."""
        mean = self.mean(pooled).float()
        log_var = self.log_var(pooled).float().clamp(-10.0, 6.0)
        z = mean + (0.5 * log_var).exp() * torch.randn_like(mean) if self.training else mean
        logits = self.log_rates(z.to(pooled.dtype), condition_ids)
        library = counts.sum(dim=1, keepdim=True)
        if self.likelihood == "nb":
            mu = library * torch.softmax(logits, dim=1)
            reconstruction = -negative_binomial_log_prob(counts, mu, self.log_theta.float().exp()).sum(dim=1)
        else:
            target = torch.log1p(counts / library.clamp_min(1.0) * CP10K)
            reconstruction = F.mse_loss(logits, target, reduction="none").sum(dim=1)
        kl = 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(dim=1)
        per_cell = reconstruction + kl_weight * kl
        expressed = (counts > 0).sum(dim=1).float().mean().clamp_min(1.0)
        return per_cell.mean() / expressed


def negative_binomial_log_prob(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor,
                               eps: float = 1e-8) -> torch.Tensor:
    """log NB(x; mean mu, inverse dispersion theta), elementwise (scVI's parametrisation)."""
    log_theta_mu = torch.log(theta + mu + eps)
    return (theta * (torch.log(theta + eps) - log_theta_mu) + x * (torch.log(mu + eps) - log_theta_mu)
            + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1.0))


def dense_counts(offsets: torch.Tensor, genes: torch.Tensor, counts: torch.Tensor,
                 n_outputs: int) -> torch.Tensor:
    """The sparse per-cell rows of a batch as a dense ``[B, n_outputs]`` matrix."""
    n_cells = len(offsets) - 1
    rows = torch.repeat_interleave(torch.arange(n_cells, device=genes.device), offsets.diff())
    dense = torch.zeros(n_cells, n_outputs, device=counts.device, dtype=torch.float32)
    dense[rows, genes] = counts.float()
    return dense
