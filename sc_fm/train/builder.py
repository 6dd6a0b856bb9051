"""What a run is built from, handed to the trainer as explicit parts: the run config read once
into the loader's own arguments, over stores opened once."""

from __future__ import annotations

from collections.abc import Sequence

from sc_fm.config import RunConfig
from sc_fm.data import build_train_loader, open_stores
from sc_fm.data.loader import TrainBatches
from sc_fm.store import CorpusStore
from sc_fm.tokenize import CellTokenizer


def run_loader(cfg: RunConfig, tokenizer: CellTokenizer, stores: Sequence[CorpusStore] | None = None,
               rank: int = 0, world_size: int = 1, idle_workers: bool = False) -> TrainBatches:
    """The training stream of ``cfg`` (its data section, seed, micro-batch and cell objective) over
    ``stores`` (default: ``cfg.data.stores``, opened here)."""
    stores = stores if stores is not None else open_stores(cfg.data.stores)
    return build_train_loader(stores, cfg.data, tokenizer, seed=cfg.train.seed,
                              batch_cells=cfg.train.micro_batch_cells,
                              with_expression=cfg.model.cell_objective != "none", rank=rank,
                              world_size=world_size, idle_workers=idle_workers)
