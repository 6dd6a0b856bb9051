"""The block plan: which contiguous cell blocks exist, and in which order an epoch reads them.

A block is up to ``block_cells`` consecutive rows of one shard (so one read touches whole
compressed chunks). Each epoch orders all blocks with ``(seed, epoch)`` — the same order on
every rank — and deals them round-robin to ranks, so every cell belongs to exactly one rank
for any world size. A rank reads its blocks ``blocks_per_fetch`` at a time: one fetch is one
unit of worker work and one shuffle buffer. Memory is one row per block, not per cell.

Two orders (``data.block_order``):

* ``stratified`` (default): the blocks, in storage order, fall into ``blocks_per_fetch x
  world_size`` equal strata, and every fetch of every rank takes its blocks from strata spread
  evenly over the whole corpus (one block of each of ``blocks_per_fetch`` strata, chosen at
  random inside the stratum; the fetches come in random order). Atlases are stored study by
  study, so a random set of blocks over-represents some studies in one fetch and others in
  the next; a stratified fetch holds each study in its corpus share, whatever the seed.
* ``random``: one plain permutation of the blocks (the order before ``stratified`` existed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sc_fm.data.filters import CellFilter
from sc_fm.store import CorpusStore


@dataclass(frozen=True)
class BlockTable:
    """One entry per block with at least one selected cell."""

    store: np.ndarray  # int64 [n_blocks]
    shard: np.ndarray
    start: np.ndarray  # first row in the shard
    stop: np.ndarray
    n_cells: np.ndarray  # selected cells in the block

    def __len__(self) -> int:
        return len(self.store)

    @property
    def total_cells(self) -> int:
        return int(self.n_cells.sum())


@dataclass(frozen=True)
class Fetch:
    """Blocks a worker reads together; ``start`` is the offset of its first cell in the epoch."""

    epoch: int
    number: int
    blocks: np.ndarray
    n_cells: int
    start: int


def build_blocks(stores: Sequence[CorpusStore], block_cells: int, cell_filter: CellFilter) -> BlockTable:
    columns: list[list[int]] = [[], [], [], [], []]
    for s, store in enumerate(stores):
        for k, info in enumerate(store.shards):
            starts = np.arange(0, info.n_cells, block_cells)
            stops = np.minimum(starts + block_cells, info.n_cells)
            if cell_filter.active:
                kept = cell_filter.keep(store, k, 0, info.n_cells)
                counts = np.add.reduceat(kept.astype(np.int64), starts) if len(starts) else starts
            else:
                counts = stops - starts
            for column, values in zip(columns, (np.full(len(starts), s), np.full(len(starts), k),
                                                starts, stops, counts)):
                column.extend(values.tolist())
    table = BlockTable(*(np.asarray(c, np.int64) for c in columns))
    nonempty = table.n_cells > 0
    return BlockTable(*(getattr(table, f)[nonempty] for f in ("store", "shard", "start", "stop", "n_cells")))


# the order of every run saved before ``data.block_order`` existed
ORDER_BEFORE_BLOCK_ORDERS = "random"


def stratified_order(n_blocks: int, group: int, rng: np.random.Generator) -> np.ndarray:
    """All blocks, in groups of ``group`` that each take one block from every stratum.

    Stratum ``s`` is the ``s``-th of ``group`` runs of consecutive blocks (sizes differ by at
    most one); a block's slot in its stratum is random, and group ``g`` holds every stratum's
    slot ``g``. Groups come in random order, the one short group (when ``group`` does not divide
    ``n_blocks``) last. Inside a group blocks follow their strata from a random starting
    stratum, so dealing the group round-robin to ranks gives each rank strata spread evenly
    over the corpus too (rank ``r`` of ``W``: every ``W``-th stratum).
    """
    strata = max(1, min(group, n_blocks))
    stratum = np.arange(n_blocks) * strata // n_blocks  # non-decreasing: storage order
    first = np.searchsorted(stratum, np.arange(strata))
    by_stratum = np.lexsort((rng.random(n_blocks), stratum))  # random order inside each stratum
    slot = np.empty(n_blocks, np.int64)
    slot[by_stratum] = np.arange(n_blocks) - first[stratum[by_stratum]]
    full = n_blocks // strata  # slots every stratum has
    group_rank = np.append(rng.permutation(full), full)  # slot `full` (the short group, if any) last
    rotation = rng.integers(0, strata, full + 1)
    within = (stratum - rotation[slot]) % strata
    return np.lexsort((within, group_rank[slot]))


def epoch_order(n_blocks: int, seed: int, epoch: int, block_order: str, group: int) -> np.ndarray:
    """The epoch's order of all blocks (before dealing them to ranks)."""
    rng = np.random.default_rng([seed, epoch])
    if block_order == "random":
        return rng.permutation(n_blocks)
    return stratified_order(n_blocks, group, rng)


def epoch_fetches(table: BlockTable, seed: int, epoch: int, rank: int, world_size: int,
                  blocks_per_fetch: int, block_order: str) -> list[Fetch]:
    """The fetches of ``rank`` in ``epoch``, in reading order."""
    order = epoch_order(len(table), seed, epoch, block_order, blocks_per_fetch * world_size)
    mine = order[rank::world_size]
    fetches = []
    start = 0
    for number, lo in enumerate(range(0, len(mine), blocks_per_fetch)):
        blocks = mine[lo: lo + blocks_per_fetch]
        n = int(table.n_cells[blocks].sum())
        fetches.append(Fetch(epoch, number, blocks, n, start))
        start += n
    return fetches
