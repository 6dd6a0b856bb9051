"""Shared fixtures: a small simulated atlas and a corpus store made from it."""

from __future__ import annotations

import numpy as np
import pytest

from sc_fm.simulate import AtlasSpec, simulate_atlas
from sc_fm.stats import GeneStatsAccumulator
from sc_fm.store import GLOBAL_GROUP, CorpusStore, StoreWriter
from sc_fm.vocab import GeneVocab

TINY_SPEC = AtlasSpec(n_cells=600, n_genes=300, n_studies=3, n_cell_types=4, seed=7,
                      empty_fraction=0.0, low_quality_fraction=0.0)


@pytest.fixture(scope="session")
def tiny_atlas():
    """600 cells x 300 genes, 3 studies with different assays, 4 cell types."""
    return simulate_atlas(TINY_SPEC)


@pytest.fixture(scope="session")
def tiny_store(tiny_atlas, tmp_path_factory) -> CorpusStore:
    """The tiny atlas as a corpus store (2 shards), statistics for global/dataset/assay."""
    adata = tiny_atlas
    vocab = GeneVocab(list(adata.var_names), list(adata.var["symbol"]), name="tiny")
    path = tmp_path_factory.mktemp("store") / "tiny.zarr"
    groups = ("dataset", "assay")
    stats = {GLOBAL_GROUP: {"all": GeneStatsAccumulator(vocab.n_genes)}}
    for g in groups:
        stats[g] = {v: GeneStatsAccumulator(vocab.n_genes) for v in adata.obs[g].unique()}
    with StoreWriter(path, vocab, chunk_cells=64) as writer:
        for lo, hi in ((0, 350), (350, adata.n_obs)):
            x = adata.X[lo:hi].tocsr()
            x.sort_indices()
            obs = {c: adata.obs[c].to_numpy()[lo:hi] for c in ("dataset", "assay", "donor", "cell_type")}
            num = {"n_counts": np.asarray(x.sum(axis=1)).ravel()}
            writer.add_shard(x.indptr, x.indices, x.data, obs, num, source="simulated")
            stats[GLOBAL_GROUP]["all"].update(x.indptr, x.indices, x.data)
            for g in groups:
                for value in np.unique(obs[g]):
                    rows = x[obs[g] == value]
                    stats[g][value].update(rows.indptr, rows.indices, rows.data)
        writer.commit(stats, [{"path": "simulated", "cells_read": adata.n_obs, "cells_kept": adata.n_obs}])
    return CorpusStore(path)
