"""``CorpusDataset``: raw cells streamed from corpus stores in shuffled blocks.

Each worker of each rank reads every ``num_workers``-th fetch of its rank's epoch plan
(``sc_fm.data.plan``), so together they read each cell of the epoch exactly once, and the
DataLoader's round-robin over workers returns fetches in plan order: the sequence of cells is
the same for any number of workers. Within a fetch, cells are shuffled with an RNG keyed by
(seed, epoch, rank, fetch). The position ``(epoch, offset)`` is all the state there is, so a
resumed dataset (any number of workers) continues the exact same sequence.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from sc_fm.config import DataConfig
from sc_fm.data.filters import CellFilter
from sc_fm.data.plan import ORDER_BEFORE_BLOCK_ORDERS, BlockTable, Fetch, build_blocks, epoch_fetches
from sc_fm.data.stores import store_offsets
from sc_fm.errors import ConfigError
from sc_fm.store import CorpusStore


@dataclass
class CellBlock:
    """Raw cells of a fetch (shuffled, from ``read``) or of one block (storage order, from
    ``read_blocks``): counts CSR in vocabulary space plus metadata."""

    counts: sp.csr_matrix  # [n, n_genes]
    obs: dict[str, np.ndarray]  # column -> category string per cell (None where missing)
    cell_index: np.ndarray  # int64 [n], global (stores numbered in order)
    epoch: int
    fetch: int
    start: int  # offset in this rank's epoch sequence of the fetch's first (remaining) cell

    def __len__(self) -> int:
        return self.counts.shape[0]

    def drop_first(self, n: int) -> "CellBlock":
        """The block without its first ``n`` cells (already consumed before a resume)."""
        if n == 0:
            return self
        return CellBlock(self.counts[n:], {c: v[n:] for c, v in self.obs.items()}, self.cell_index[n:],
                         self.epoch, self.fetch, self.start + n)


class CorpusDataset(torch.utils.data.IterableDataset):
    """Iterates ``CellBlock``s from the current position; ``epochs`` None means forever."""

    def __init__(self, stores: Sequence[CorpusStore], config: DataConfig, columns: Sequence[str] = (), *,
                 seed: int = 0, rank: int = 0, world_size: int = 1, epochs: int | None = None):
        super().__init__()
        if config.block_cells < 1 or config.blocks_per_fetch < 1:
            raise ConfigError("data.block_cells and data.blocks_per_fetch must be at least 1", "config")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world size {world_size}", "distributed launch")
        self.stores = list(stores)
        self.config = config
        self.columns = list(dict.fromkeys(columns))
        self.seed, self.rank, self.world_size, self.epochs = seed, rank, world_size, epochs
        self.filter = CellFilter(config.include, config.exclude)
        self.filter.check(self.stores)
        self.blocks: BlockTable = build_blocks(self.stores, config.block_cells, self.filter)
        if self.blocks.total_cells == 0:
            raise ConfigError("data.include/data.exclude select no cells", "data",
                              "loosen the filters; `scfm info STORE` lists the metadata values")
        if len(self.blocks) < world_size:
            raise ConfigError(f"{len(self.blocks)} cell blocks cannot be shared by {world_size} ranks",
                              "data.block_cells", "lower data.block_cells or use fewer ranks")
        self._store_offsets = store_offsets(self.stores)
        _warn_of_whole_chunk_reads(self.stores, config)
        self.epoch = 0
        self.offset = 0

    # ---- position -----------------------------------------------------------------------
    def fetches(self, epoch: int) -> list[Fetch]:
        return epoch_fetches(self.blocks, self.seed, epoch, self.rank, self.world_size,
                             self.config.blocks_per_fetch, self.config.block_order)

    @property
    def block_order(self) -> str:
        return self.config.block_order

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size, "block_order": self.block_order}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``; a different seed, world size or block order has another plan, so
        it is refused. States saved before ``block_order`` existed used the ``random`` order."""
        state = {"block_order": ORDER_BEFORE_BLOCK_ORDERS, **state}
        for key, fix in (("seed", "train.seed"), ("world_size", "the number of processes"), ("rank", "rank"),
                         ("block_order", "data.block_order")):
            if state.get(key, getattr(self, key)) != getattr(self, key):
                raise ConfigError(f"loader state was saved with {key}={state[key]}, this run has "
                                  f"{getattr(self, key)}", "checkpoint",
                                  f"resume with the same {key} ({fix})")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

    # ---- iteration ----------------------------------------------------------------------
    def plan(self) -> Iterator[tuple[Fetch, int]]:
        """(fetch, cells to skip at its start) from the current position on, across epochs."""
        epoch, offset = self.epoch, self.offset
        while self.epochs is None or epoch < self.epochs:
            for fetch in self.fetches(epoch):
                if fetch.start + fetch.n_cells > offset:
                    yield fetch, max(0, offset - fetch.start)
            epoch, offset = epoch + 1, 0

    def worker_fetches(self) -> Iterator[tuple[Fetch, int]]:
        """The part of ``plan()`` this DataLoader worker reads (every n-th fetch)."""
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        for n, item in enumerate(self.plan()):
            if n % n_workers == worker:
                yield item

    def __iter__(self) -> Iterator[CellBlock]:
        for fetch, skip in self.worker_fetches():
            yield self.read(fetch).drop_first(skip)

    def read(self, fetch: Fetch) -> CellBlock:
        """A fetch's cells, shuffled: its blocks read whole, joined, then put in ``cell_order``."""
        blocks = self.read_blocks(fetch)
        order = self.cell_order(fetch)
        counts = sp.vstack([b.counts for b in blocks], format="csr")[order]
        obs = {c: np.concatenate([b.obs[c] for b in blocks])[order] for c in self.columns}
        return CellBlock(counts, obs, np.concatenate([b.cell_index for b in blocks])[order], fetch.epoch,
                         fetch.number, fetch.start)

    def cell_order(self, fetch: Fetch) -> np.ndarray:
        """The shuffle of a fetch: position in the fetch's blocks of its i-th cell."""
        rng = np.random.default_rng([self.seed, fetch.epoch, self.world_size, self.rank, fetch.number])
        return rng.permutation(fetch.n_cells)

    def read_blocks(self, fetch: Fetch) -> list[CellBlock]:
        """A fetch's blocks in storage order (whole contiguous row ranges), filtered."""
        out = []
        for b in fetch.blocks:
            s, k = int(self.blocks.store[b]), int(self.blocks.shard[b])
            start, stop = int(self.blocks.start[b]), int(self.blocks.stop[b])
            store = self.stores[s]
            indptr, indices, data = store.read_rows(k, start, stop)
            counts = sp.csr_matrix((data, indices, indptr), shape=(stop - start, store.n_genes))
            obs = _obs_slice(store, k, start, stop, self.columns)
            cells = np.arange(start, stop, dtype=np.int64) + int(store.offsets[k] + self._store_offsets[s])
            if self.filter.active:
                keep = self.filter.keep(store, k, start, stop)
                counts, cells = counts[keep], cells[keep]
                obs = {c: v[keep] for c, v in obs.items()}
            out.append(CellBlock(counts, obs, cells, fetch.epoch, fetch.number, fetch.start))
        return out


def _warn_of_whole_chunk_reads(stores: Sequence[CorpusStore], config: DataConfig) -> None:
    """Small blocks suit stores whose reads decode only the blosc blocks they need; where a read
    decodes whole chunks instead, a 64-cell block of a 1,024-cell chunk costs 16x the decoding."""
    for store in stores:
        rows = store.chunk_rows(0) if store.shards else None
        if rows is not None and config.block_cells < rows // 2:
            warnings.warn(f"store {store.path} decodes whole chunks of about {rows} cells per read "
                          f"(its codec is not blosc, or c-blosc is missing), and data.block_cells="
                          f"{config.block_cells} reads a fraction of one: pass data.block_cells={rows} "
                          f"data.blocks_per_fetch="
                          f"{max(1, config.block_cells * config.blocks_per_fetch // rows)} (the same "
                          "shuffle buffer in whole-chunk blocks) or re-prepare the store with the "
                          "default blosc codec",
                          stacklevel=3)


def _obs_slice(store: CorpusStore, shard: int, start: int, stop: int, columns: Sequence[str]) -> dict:
    """Category strings of ``columns`` for rows ``[start, stop)`` of a shard (None: missing)."""
    out = {}
    for column in columns:
        found = store.shard_obs(shard, column, start, stop)
        if found is None:
            out[column] = np.full(stop - start, None, dtype=object)
        else:
            codes, categories = found
            out[column] = np.array(categories + [None], dtype=object)[codes]  # code -1: None
    return out
