"""Opening the corpus stores of a run, checked to agree before any training starts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sc_fm.errors import ConfigError, InputDataError
from sc_fm.store import CorpusStore


def open_stores(paths: Sequence[str]) -> list[CorpusStore]:
    """Open every store; they must share one vocabulary (one token meaning per gene)."""
    if not paths:
        raise ConfigError("no corpus stores given", "data.stores",
                          "set data.stores to a list of store paths made by `scfm prepare`")
    stores = [CorpusStore(p) for p in paths]
    first = stores[0]
    for store in stores[1:]:
        if store.vocab_hash != first.vocab_hash:
            raise InputDataError(f"vocabulary {store.vocab_hash} differs from {first.vocab_hash} of "
                                 f"{first.path}", str(store.path),
                                 "prepare all stores of a run with the same vocabulary (prepare.vocab)")
    return stores


def store_offsets(stores: Sequence[CorpusStore]) -> np.ndarray:
    """First global cell index of each store (cells of several stores are numbered in order)."""
    return np.cumsum([0] + [s.n_cells for s in stores])[:-1].astype(np.int64)
