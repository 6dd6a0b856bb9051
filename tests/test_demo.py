"""The demo's corpus: simulated studies on real sc_mixology gene IDs plus the real cells as their
own datasets, with the real cells removable from pretraining by ``data.exclude``."""

from __future__ import annotations

import numpy as np

from sc_fm.data import CellFilter
from sc_fm.datasets import load_sc_mixology
from sc_fm.demo import REAL_DATASETS, DemoSize, build_corpus, mixology_gene_universe
from sc_fm.store import CorpusStore


def test_demo_corpus_holds_simulated_and_real_datasets(tmp_path):
    size = DemoSize(sim_cells=400, sim_genes=1500, max_steps=1, scvi_epochs=1)
    store = CorpusStore(build_corpus(tmp_path, size, progress=False))
    datasets = store.obs_values("dataset")
    assert set(datasets) == {f"simulated_study_{i}" for i in range(4)} | set(REAL_DATASETS)
    mixology = load_sc_mixology(singlets_only=False)
    assert store.vocab.gene_ids == mixology_gene_universe(1500)  # real genes keep their own IDs
    real = np.isin(datasets, REAL_DATASETS)
    assert 0 < real.sum() <= mixology.n_obs
    held_out = CellFilter(include={}, exclude={"dataset": list(REAL_DATASETS)})
    held_out.check([store])
    kept = np.concatenate([held_out.keep(store, k, 0, shard.n_cells)
                           for k, shard in enumerate(store.shards)])
    np.testing.assert_array_equal(kept, ~real)
