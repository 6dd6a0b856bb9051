"""The demo's corpus: simulated studies on the vocabulary's genes, the real mixture profiles and
the real PBMC pretraining sets; the evaluation cells (the cell-line singlets, pbmc4k and the
sorted 2,140) are in it in no form (cells, genes chosen from them). And how the demo divides its
pretraining stage's time into steps and start-up."""

from __future__ import annotations

import numpy as np

from sc_fm.datasets import (MIXTURES, PBMC_EVALUATION, load_pbmc_cross_chemistry, load_pbmc_pretraining,
                             load_sc_mixology, load_sc_mixology_mixtures)
from sc_fm.demo import FULL, DemoSize, build_corpus
from sc_fm.store import CorpusStore

IMMUNE_MARKERS = ["CD3E", "CD4", "CD8A", "MS4A1", "CD79A", "NKG7", "GNLY", "LYZ", "CD14", "FCGR3A", "FCER1A", "PPBP"]


def test_demo_corpus_holds_both_tissues_but_no_evaluation_cell(tmp_path):
    from data_pipelines.selection import coverage, detected_fraction

    size = DemoSize(sim_cells=400, vocab_detected=FULL.vocab_detected, vocab_variable=FULL.vocab_variable, max_steps=1,
                    scvi_epochs=1, adapt_steps=1)
    store = CorpusStore(build_corpus(tmp_path, size, progress=False))
    datasets = store.obs_values("dataset")
    mixture_sets = {f"sc_mixology_{name}" for name in MIXTURES}
    pbmc_sets = {"zheng2017_frozen_donor_a", "zheng2017_sorted_3426"}
    assert set(datasets) == {f"simulated_study_{i}" for i in range(4)} | mixture_sets | pbmc_sets
    mixtures, pbmc = load_sc_mixology_mixtures(), load_pbmc_pretraining()
    for expected, sets in ((mixtures.n_obs, mixture_sets), (pbmc.n_obs, pbmc_sets)):
        assert 0.95 * expected <= np.isin(datasets, sorted(sets)).sum() <= expected
    assert all(coverage(store.vocab, IMMUNE_MARKERS).values())  # rare markers come in as variable genes
    assert store.vocab.lookup(["CD3E"])[0] == store.vocab.lookup(["ENSG00000198851"])[0] >= 0  # symbols kept
    # the vocabulary is chosen from the pretraining sources alone: a gene detected in the held-out
    # cells but in no pretraining cell cannot be in it
    evaluation = load_pbmc_cross_chemistry()
    seen = set(detected_fraction(pbmc).loc[lambda d: d > 0].index) | set(mixtures.var_names)
    unseen = [g for g in evaluation.var_names[detected_fraction(evaluation) > 0.2] if g not in seen]
    assert not set(store.vocab.lookup(unseen)) - {-1}
    held_out = set(load_sc_mixology().obs["batch"].astype(str)) | set(evaluation.obs["study"].astype(str))
    assert not held_out & set(store.categories["dataset"]) and not set(PBMC_EVALUATION) & set(datasets)


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
