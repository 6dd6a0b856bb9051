"""Cross-batch neighbour attraction: the same cells in two batches should be neighbours.

The decoder's per-condition offsets let the cell embedding leave the batch out, and the
condition adversary asks that no classifier read the batch; neither asks for what the
integration metrics score, that a cell's neighbours come from every batch. This objective
does, in the manner of fastMNN (Haghverdi et al., 2018), learnt rather than applied:

1. **Mutual nearest neighbours.** A cell and a cell of another batch that are each among the
   other's ``k`` nearest across that pair of batches are taken to be the same state; the cell's
   *shift* is the mean offset to its mutual partners (zero without any). Mutuality keeps cell
   types that one batch lacks out of it: they have no partners in the other batch.
2. **Smoothing.** A cell is moved by the mean shift of its ``k`` nearest cells of its own batch
   (itself included), so a whole population follows its mutual pairs, not only the cells at its
   edge; a population without partners has shifts of zero around it and stays.

The loss is the squared length of that smoothed shift per dimension, with the target detached:
its gradient moves each cell's embedding along its shift.

Neighbours are searched in a first-in first-out bank of the last ``bank`` cells' embeddings and
shifts (detached), so that a batch of a few dozen cells still meets every cell type of every
batch. A batch is a combination of condition categories, compared key by key, so categories
that an adaptation adds (``grow_conditions``) need nothing here. The bank is working memory,
not a weight: it is not saved, and a resumed run refills it.
Cells whose condition is ``<unk>`` (id 0 in any key) take no part.
"""

from __future__ import annotations

import torch
from torch import nn


def same_batch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[n, m]``: whether cell ``i`` of ``a`` and cell ``j`` of ``b`` (condition ids ``[n, C]``,
    ``[m, C]``) share every condition, i.e. are of one batch."""
    return (a[:, None, :] == b[None, :, :]).all(dim=2)


def _nearest(distance: torch.Tensor, allowed: torch.Tensor,
             k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distances, columns and validity of each row's ``k`` nearest allowed entries (a row with
    fewer than ``k`` allowed has invalid entries at its end)."""
    k = min(k, distance.shape[1])
    distance, columns = distance.masked_fill(~allowed, float("inf")).topk(k, dim=1, largest=False)
    return distance, columns, distance.isfinite()


class CrossBatchNeighbours(nn.Module):
    """``[B, d]`` cell embeddings and their condition ids -> the mean squared smoothed shift per
    dimension (0 while the bank holds one batch only)."""

    def __init__(self, dim: int, n_condition_keys: int, bank: int, k: int):
        super().__init__()
        self.k = k
        self.register_buffer("bank", torch.zeros(bank, dim), persistent=False)
        self.register_buffer("bank_shift", torch.zeros(bank, dim), persistent=False)
        self.register_buffer("bank_conditions", torch.zeros(bank, n_condition_keys, dtype=torch.long),
                             persistent=False)
        self.written = 0  # cells ever remembered: the bank's first min(written, bank) slots are filled

    def loss(self, embedding: torch.Tensor, condition_ids: torch.Tensor) -> torch.Tensor:
        known = (condition_ids > 0).all(dim=1)
        z, conditions = embedding[known].float(), condition_ids[known].long()
        shift = self._shifts(z.detach(), conditions)
        self._remember(z.detach(), conditions, shift)
        if len(z) == 0:
            return embedding.new_zeros((), dtype=torch.float32)
        return ((z - (z.detach() + self._smoothed(z.detach(), conditions))) ** 2).mean(dim=1).sum() / len(z)

    def _filled(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = min(self.written, len(self.bank))
        return self.bank[:n].float(), self.bank_shift[:n].float(), self.bank_conditions[:n]

    def _shifts(self, z: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """Each new cell's mean offset to its mutual nearest neighbours in other batches."""
        bank, _, bank_conditions = self._filled()
        if len(z) == 0 or len(bank) == 0:
            return z.new_zeros(z.shape)
        near_distance, near, valid = _nearest(torch.cdist(z, bank), ~same_batch(conditions, bank_conditions),
                                              self.k)
        partners = bank[near]  # [n, k, d]
        # mutual: the cell is among its partner's k nearest of the cell's own batch (bank and new
        # cells together, so the cell itself is always a candidate)
        pool, pool_conditions = torch.cat([bank, z]), torch.cat([bank_conditions, conditions])
        to_pool = torch.cdist(partners.reshape(-1, z.shape[1]), pool)
        own = same_batch(conditions.repeat_interleave(near.shape[1], dim=0), pool_conditions)
        own_distance, _, own_valid = _nearest(to_pool, own, self.k)
        kth = own_distance.masked_fill(~own_valid, -float("inf")).max(dim=1).values.reshape(near.shape)
        mutual = (valid & (near_distance <= kth)).to(z.dtype)
        offsets = torch.where(valid[..., None], partners - z[:, None, :], 0.0)
        return (offsets * mutual[..., None]).sum(dim=1) / mutual.sum(dim=1, keepdim=True).clamp(min=1)

    def _smoothed(self, z: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """The mean shift of each cell's ``k`` nearest cells of its own batch (the bank, which
        now holds the cell itself)."""
        bank, bank_shift, bank_conditions = self._filled()
        _, nearest, valid = _nearest(torch.cdist(z, bank), same_batch(conditions, bank_conditions), self.k)
        weights = valid.to(z.dtype)[..., None]
        return (bank_shift[nearest] * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)

    @torch.no_grad()
    def _remember(self, z: torch.Tensor, conditions: torch.Tensor, shift: torch.Tensor) -> None:
        keep = slice(max(len(z) - len(self.bank), 0), None)
        slots = (self.written + torch.arange(len(z[keep]), device=z.device)) % len(self.bank)
        self.bank[slots] = z[keep].to(self.bank.dtype)
        self.bank_shift[slots] = shift[keep].to(self.bank.dtype)
        self.bank_conditions[slots] = conditions[keep]
        self.written += len(z[keep])
