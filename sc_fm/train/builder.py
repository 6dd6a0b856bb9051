"""What a run is built from, handed to the trainer as explicit parts over stores opened once:
the tokenizer, the gene table's co-expression start and the loader (the run config read into
the loader's own arguments)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from sc_fm.config import RunConfig
from sc_fm.data import build_train_loader, kept_cells, open_stores
from sc_fm.data.coexpression import coexpression_loadings, kept_normalised_rows
from sc_fm.data.loader import TrainBatches
from sc_fm.model import MaskedGeneTransformer
from sc_fm.pretrained import Pretrained
from sc_fm.store import CorpusStore
from sc_fm.tokenize import CellTokenizer
from sc_fm.tokenize.normalisers import is_group_normalised
from sc_fm.vocab import N_SPECIAL


def run_tokenizer(cfg: RunConfig, stores: Sequence[CorpusStore], latest: Path | None,
                  initial: Pretrained | None) -> CellTokenizer:
    """A resumed run's saved tokenizer, an adaptation's given one, else normalisers and condition
    categories of the cells that train: held-out cells (``data.exclude``/``include``) reach neither."""
    if latest is not None:
        return CellTokenizer.load(latest / "tokenizer")
    if initial is not None:
        return initial.tokenizer
    t = cfg.tokenizer
    group = t.stats_group if is_group_normalised(t.stats_group) else None
    kept = kept_cells(list(stores), cfg.data, group, t.condition_keys)
    return CellTokenizer.from_stores(t, list(stores), kept)


def coexpression_start(model: MaskedGeneTransformer, cfg: RunConfig, tokenizer: CellTokenizer,
                       stores: Sequence[CorpusStore]) -> None:
    """Gene embeddings from the training cells' principal axes (``sc_fm/data/coexpression.py``);
    every rank computes the same table from the same sample."""
    m = cfg.model
    group = tokenizer.config.stats_group if tokenizer.normalises_by_group else None
    rows = kept_normalised_rows(list(stores), cfg.data, tokenizer.normalised_values, group, m.gene_init_cells,
                                cfg.train.seed)
    loadings = coexpression_loadings(rows, m.d_model, m.init_std, cfg.train.seed)
    model.embedding.set_gene_rows(N_SPECIAL, torch.from_numpy(loadings))


def run_loader(cfg: RunConfig, tokenizer: CellTokenizer, stores: Sequence[CorpusStore] | None = None,
               rank: int = 0, world_size: int = 1, idle_workers: bool = False) -> TrainBatches:
    """The training stream of ``cfg`` (its data section, seed, micro-batch and cell objective) over
    ``stores`` (default: ``cfg.data.stores``, opened here)."""
    stores = stores if stores is not None else open_stores(cfg.data.stores)
    return build_train_loader(stores, cfg.data, tokenizer, seed=cfg.train.seed,
                              batch_cells=cfg.train.micro_batch_cells,
                              with_expression=cfg.model.cell_objective != "none", rank=rank,
                              world_size=world_size, idle_workers=idle_workers)
