"""The demo's corpus: simulated studies on the real mixture profiles' gene IDs plus those real
profiles; the evaluation singlets are in it in no form (cells, genes chosen from them)."""

from __future__ import annotations

import numpy as np

from sc_fm.datasets import MIXTURES, load_sc_mixology, load_sc_mixology_mixtures
from sc_fm.demo import DemoSize, build_corpus, mixture_gene_universe
from sc_fm.store import CorpusStore


def test_demo_corpus_holds_simulated_and_mixture_profiles_but_no_evaluation_cell(tmp_path):
    size = DemoSize(sim_cells=400, sim_genes=1500, max_steps=1, scvi_epochs=1, adapt_steps=1)
    store = CorpusStore(build_corpus(tmp_path, size, progress=False))
    datasets = store.obs_values("dataset")
    mixture_sets = {f"sc_mixology_{name}" for name in MIXTURES}
    assert set(datasets) == {f"simulated_study_{i}" for i in range(4)} | mixture_sets
    assert store.vocab.gene_ids == mixture_gene_universe(1500)  # real genes keep their own IDs
    mixtures = load_sc_mixology_mixtures()
    real = np.isin(datasets, sorted(mixture_sets))
    assert 0.95 * mixtures.n_obs <= real.sum() <= mixtures.n_obs
    singlets = load_sc_mixology()
    assert not set(singlets.obs["batch"].astype(str)) & set(store.categories["dataset"])
    totals = np.asarray(mixtures.X.sum(axis=0)).ravel()
    top = set(mixtures.var_names[np.argsort(-totals, kind="stable")[:1500]])
    assert set(store.vocab.gene_ids) == top  # chosen from the pretraining profiles alone
