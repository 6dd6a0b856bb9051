"""Corpus stores -> training batches: block-shuffled streaming, sharding, exact resume."""

from sc_fm.data.dataset import CellBlock, CorpusDataset
from sc_fm.data.filters import CellFilter
from sc_fm.data.kept import KeptCells, kept_cells
from sc_fm.data.loader import TrainBatches, build_train_loader, tokenizer_columns
from sc_fm.data.stores import open_stores

__all__ = ["CellBlock", "CellFilter", "CorpusDataset", "KeptCells", "TrainBatches", "build_train_loader",
           "kept_cells", "open_stores", "tokenizer_columns"]
