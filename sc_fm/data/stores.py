"""Opening the corpus stores of a run, checked to agree before any training starts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sc_fm.errors import ConfigError, InputDataError
from sc_fm.store import CorpusStore
from sc_fm.store.verify import shard_size_problem


def open_stores(paths: Sequence[str]) -> list[CorpusStore]:
    """Open every store; they must share one vocabulary (one token meaning per gene)."""
    if not paths:
        raise ConfigError("no corpus stores given", "data.stores",
                          "set data.stores to a list of store paths made by `scfm prepare`")
    stores = [CorpusStore(p) for p in paths]
    seen: dict[str, str] = {}
    for given, store in zip(paths, stores):
        key = str(store.path.resolve()) if isinstance(store.path, Path) else str(store.path).rstrip("/")
        if key in seen:
            raise ConfigError(f"store {given} is listed twice (also as {seen[key]}): its cells would train twice "
                              f"as often as the others'", "data.stores",
                              "list each store once (weighting stores is not done by repeating them)")
        seen[key] = str(given)
    for store in stores:  # a listed size that under-states the arrays would skip cells silently
        for k, shard in enumerate(store.shards):
            problem = shard_size_problem(store, k)
            if problem:
                raise InputDataError(f"shard {shard.name} {problem}", str(store.path),
                                     "run `scfm verify` on the store (and --repair or re-prepare it)")
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
