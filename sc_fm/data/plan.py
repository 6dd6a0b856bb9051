"""The block plan: which contiguous cell blocks exist, and in which order an epoch reads them.

A block is up to ``block_cells`` consecutive rows of one shard (so one read touches whole
compressed chunks). Each epoch permutes all blocks with ``(seed, epoch)`` — the same order on
every rank — and deals them round-robin to ranks, so every cell belongs to exactly one rank
for any world size. A rank reads its blocks ``blocks_per_fetch`` at a time: one fetch is one
unit of worker work and one shuffle buffer. Memory is one row per block, not per cell.
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


def epoch_fetches(table: BlockTable, seed: int, epoch: int, rank: int, world_size: int,
                  blocks_per_fetch: int) -> list[Fetch]:
    """The fetches of ``rank`` in ``epoch``, in reading order."""
    order = np.random.default_rng([seed, epoch]).permutation(len(table))
    mine = order[rank::world_size]
    fetches = []
    start = 0
    for number, lo in enumerate(range(0, len(mine), blocks_per_fetch)):
        blocks = mine[lo: lo + blocks_per_fetch]
        n = int(table.n_cells[blocks].sum())
        fetches.append(Fetch(epoch, number, blocks, n, start))
        start += n
    return fetches
