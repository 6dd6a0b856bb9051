"""The demo's corpus: simulated studies on the real mixture profiles' gene IDs plus those real
profiles; the evaluation singlets are in it in no form (cells, genes chosen from them). And
how the demo divides its pretraining stage's time into steps and start-up."""

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


def test_pretraining_time_divides_the_stage_into_steps_and_start_up(tmp_path):
    import json

    from sc_fm.config import RunConfig, save_config
    from sc_fm.demo import pretraining_time

    cfg = RunConfig()
    cfg.train.global_batch_cells = 64
    save_config(cfg, tmp_path / "config.yaml")
    rates = [32.0] + [128.0] * 8 + [16.0]  # 2 s, eight steady 0.5 s steps, a 4 s stall
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "cells_per_s": r}) + "\n"
                                                    for i, r in enumerate(rates)))
    text = pretraining_time(tmp_path, stage_s=20.0)
    assert text.startswith("pretraining: 10 steps in 10 s, 2.00x steps x the steady 0.50 s/step")
    assert "the stage took 20 s (4.00x)" in text
