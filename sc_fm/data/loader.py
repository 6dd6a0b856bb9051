"""Training batches: tokenised in DataLoader workers, masked and packed per batch.

Workers tokenise whole fetches (``CorpusDataset`` order) with an RNG keyed by
(seed, epoch, rank, fetch), and ship the compact unmasked cells (int32 token ids, float32
values: a third of a packed batch's bytes). The main process cuts them into batches of
exactly ``batch_cells`` cells and masks each batch with an RNG keyed by the position of its
first cell, so tokens and masks depend only on the plan, never on the number of workers.
``state_dict`` is the position of the first cell not yet handed out; ``load_state_dict``
restarts the stream there, giving the same batches as an uninterrupted run.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from sc_fm.config import RunConfig
from sc_fm.data.dataset import CellBlock, CorpusDataset
from sc_fm.data.stores import open_stores
from sc_fm.tokenize import CellTokenizer, TokenizedCells, check_vocabulary

_ENCODE, _MASK = 0, 1


class TokenizedFetches(torch.utils.data.IterableDataset):
    """Each fetch of ``dataset`` as unmasked tokenised cells (runs inside workers)."""

    def __init__(self, dataset: CorpusDataset, tokenizer: CellTokenizer, with_expression: bool = False):
        super().__init__()
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.with_expression = with_expression  # cells carry their whole count row (cell-level target)

    def __iter__(self) -> Iterator[dict]:
        for fetch, skip in self.dataset.worker_fetches():
            # tokenise in storage order, then shuffle the (smaller) tokens rather than raw rows;
            # the whole fetch is encoded even when resuming inside it, so its RNG use is the same
            blocks = self.dataset.read_blocks(fetch)
            rng = np.random.default_rng([self.dataset.seed, self.dataset.world_size, self.dataset.rank,
                                         fetch.epoch, fetch.number, _ENCODE])
            order = self.dataset.cell_order(fetch)[skip:]
            cells = TokenizedCells.gather([self.encode(block, rng) for block in blocks], order)
            yield {**cells.to_arrays(),
                   "cell_index": np.concatenate([b.cell_index for b in blocks])[order],
                   "epoch": fetch.epoch, "start": fetch.start + skip}

    def encode(self, block: CellBlock, rng: np.random.Generator) -> TokenizedCells:
        tok = self.tokenizer
        return tok.encode_rows(block.counts.indptr, block.counts.indices, block.counts.data,
                               {k: block.obs[k] for k in tok.config.condition_keys},
                               block.obs.get(tok.config.stats_group), rng, self.with_expression)


@dataclass
class _Pending:
    """Tokenised cells received from a worker, ``used`` of them already handed out."""

    cells: TokenizedCells
    cell_index: np.ndarray
    epoch: int
    start: int
    used: int = 0

    @classmethod
    def from_item(cls, item: dict) -> "_Pending":
        return cls(TokenizedCells.from_arrays(item), np.asarray(item["cell_index"]), int(item["epoch"]),
                   int(item["start"]))

    @property
    def left(self) -> int:
        return len(self.cells) - self.used


def tokenizer_columns(tokenizer: CellTokenizer) -> list[str]:
    """Cell metadata the tokenizer reads: condition keys and the normaliser group."""
    extra = [tokenizer.config.stats_group] if tokenizer.normalises_by_group else []
    return list(tokenizer.config.condition_keys) + extra


def run_on_idle_cores(worker_id: int) -> None:
    """DataLoader worker start: take a core only while the training process leaves it idle.

    A CPU training step's OpenMP threads each hold a core, and a region of the step ends only
    when its slowest thread does: a worker that takes one of those cores for a time slice
    stalls the whole step. At idle priority (Linux ``SCHED_IDLE``) a worker runs in the gaps
    between the step's parallel regions and gives the core back as soon as a step thread
    wakes, so the step may use every core; a worker needs a few percent of one to keep up.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux: the lowest ordinary priority instead
        os.nice(19)


class TrainBatches:
    """Endless packed, masked batches of exactly ``batch_cells`` cells; resumable exactly.

    ``idle_workers``: workers run at idle priority (``run_on_idle_cores``), for a training
    step that computes on the CPU."""

    def __init__(self, dataset: CorpusDataset, tokenizer: CellTokenizer, batch_cells: int,
                 num_workers: int = 0, with_expression: bool = False, idle_workers: bool = False):
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.batch_cells = batch_cells
        self.num_workers = num_workers
        self.with_expression = with_expression
        self.idle_workers = idle_workers
        self._stream: Iterator[dict] | None = None
        self._pending: deque[_Pending] = deque()
        self._position = (dataset.epoch, dataset.offset)

    def __iter__(self) -> "TrainBatches":
        return self

    def start(self) -> None:
        """Start the workers on their first fetches now (``__next__`` would, at the first batch):
        a run overlaps that wait with the rest of its set-up."""
        if self._stream is None:
            self._stream = self._open()

    def __next__(self) -> dict:
        self.start()
        ds = self.dataset
        mask_rng = np.random.default_rng([ds.seed, ds.world_size, ds.rank, *self._position, _MASK])
        parts, index, need = [], [], self.batch_cells
        while need:
            if not self._pending:
                self._pending.append(_Pending.from_item(next(self._stream)))
            item = self._pending[0]
            take = min(need, item.left)
            parts.append(item.cells[item.used: item.used + take])
            index.append(item.cell_index[item.used: item.used + take])
            item.used += take
            need -= take
            self._position = (item.epoch, item.start + item.used)
            if not item.left:
                self._pending.popleft()
        cells = parts[0] if len(parts) == 1 else TokenizedCells.concat(parts)
        return self.tokenizer.mask_and_pack(cells, mask_rng, np.concatenate(index))

    def _open(self) -> Iterator[dict]:
        self.dataset.epoch, self.dataset.offset = self._position
        source = TokenizedFetches(self.dataset, self.tokenizer, self.with_expression)
        if self.num_workers == 0:
            return iter(source)
        # Starting workers draws their base seed from a generator: without one of its own, the
        # DataLoader takes it from torch's global RNG, which also drives training's random draws
        # (dropout, the cell decoder's samples). A run resumed from a checkpoint starts its
        # workers after restoring that RNG, so the draw would shift every later random number.
        loader = torch.utils.data.DataLoader(source, batch_size=None, num_workers=self.num_workers,
                                             prefetch_factor=2, persistent_workers=False,
                                             worker_init_fn=run_on_idle_cores if self.idle_workers else None,
                                             generator=torch.Generator().manual_seed(self.dataset.seed))
        return iter(loader)

    def state_dict(self) -> dict:
        """JSON-serialisable position: the first cell not yet handed out."""
        epoch, offset = self._position
        return {**self.dataset.state_dict(), "epoch": int(epoch), "offset": int(offset),
                "batch_cells": self.batch_cells}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)
        self._position = (int(state["epoch"]), int(state["offset"]))
        self._pending.clear()
        self._stream = None


def build_train_loader(config: RunConfig, tokenizer: CellTokenizer, rank: int = 0, world_size: int = 1,
                       idle_workers: bool = False) -> TrainBatches:
    """Open ``config.data.stores``, check them against the tokenizer, and stream batches
    (``idle_workers``: see ``TrainBatches``)."""
    stores = open_stores(config.data.stores)
    for store in stores:
        check_vocabulary(store, tokenizer.vocab)
    dataset = CorpusDataset(stores, config.data, tokenizer_columns(tokenizer), seed=config.train.seed,
                            rank=rank, world_size=world_size)
    return TrainBatches(dataset, tokenizer, config.train.micro_batch_cells, config.data.num_workers,
                        with_expression=config.model.cell_objective != "none", idle_workers=idle_workers)
