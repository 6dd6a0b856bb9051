"""Gene embeddings started from the training cells' principal axes (sc_fm/data/coexpression.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score

from sc_fm.config import DataConfig, TokenizerConfig, load_config
from sc_fm.data.coexpression import centred_top_axes, coexpression_loadings, kept_normalised_rows, sample_blocks
from sc_fm.errors import ConfigError
from sc_fm.pretrained import Pretrained
from sc_fm.tokenize import CellTokenizer
from sc_fm.train import pretrain
from sc_fm.vocab import N_SPECIAL


def test_loadings_are_the_principal_axes_scaled_to_the_init_std():
    rng = np.random.default_rng(0)
    programs = np.zeros((2, 40))
    programs[0, :10], programs[1, 10:20] = 3.0, 1.5  # genes 0-9 and 10-19 vary together, unequally
    activity = rng.random((300, 2))
    dense = activity @ programs + 0.05 * rng.random((300, 40))
    loadings = coexpression_loadings(sp.csr_matrix(dense), 4, 0.02, seed=0)
    assert loadings.shape == (40, 4) and loadings.dtype == np.float32
    assert np.sqrt(np.mean(loadings ** 2)) == pytest.approx(0.02, rel=1e-5)
    centred = dense - dense.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    expected = vt[:4].T * s[:4] / np.sqrt(len(dense) - 1)
    expected *= 0.02 / np.sqrt(np.mean(expected ** 2))
    np.testing.assert_allclose(np.abs(loadings), np.abs(expected), atol=1e-6)  # up to each axis's sign
    assert np.all(loadings[np.abs(loadings).argmax(axis=0), range(4)] > 0)  # the sign is fixed
    top = np.abs(loadings[:, :2]).sum(axis=1)
    assert top[:20].min() > 5 * top[20:].max()  # the program genes carry the top axes
    np.testing.assert_array_equal(loadings, coexpression_loadings(sp.csr_matrix(dense), 4, 0.02, seed=0))
    with pytest.raises(ConfigError, match="too few"):
        coexpression_loadings(sp.csr_matrix(dense[:1]), 4, 0.02, seed=0)


def test_dense_and_sparse_products_find_the_same_axes():
    rng = np.random.default_rng(1)
    rows = sp.random(400, 120, density=0.3, random_state=2, format="csr") @ sp.diags(rng.uniform(1, 4, 120))
    dense_values, dense_vectors = centred_top_axes(sp.csr_matrix(rows), 8, seed=0)
    sparse_values, sparse_vectors = centred_top_axes(sp.csr_matrix(rows), 8, seed=0, dense_bytes=0)
    np.testing.assert_allclose(dense_values, sparse_values, rtol=1e-10)
    np.testing.assert_allclose(np.abs(dense_vectors @ sparse_vectors.T), np.eye(8), atol=1e-8)


def test_rows_are_the_tokenizer_values_of_the_kept_cells_only(tiny_store):
    tokenizer = CellTokenizer.from_stores(TokenizerConfig(stats_group="dataset"), [tiny_store])
    held_out = {"donor": [sorted(set(tiny_store.obs_values("donor")))[0]]}
    rows = kept_normalised_rows([tiny_store], DataConfig(exclude=held_out), tokenizer.normalised_values,
                                "dataset", max_cells=10_000, seed=0)
    kept = tiny_store.obs_values("donor") != held_out["donor"][0]
    assert rows.shape == (int(kept.sum()), tiny_store.n_genes) and 0 < kept.sum() < tiny_store.n_cells
    k, start = 0, 0
    indptr, indices, data = tiny_store.read_rows(k, start, tiny_store.shards[0].n_cells)
    first = np.flatnonzero(kept[: len(indptr) - 1])[0]
    values = tokenizer.normalised_values(indptr, indices, data, tiny_store.obs_values("dataset")[: len(indptr) - 1])
    expected = sp.csr_matrix((values, indices, indptr), shape=(len(indptr) - 1, tiny_store.n_genes))[first]
    np.testing.assert_allclose(rows[0].toarray(), expected.toarray())
    sampled = sample_blocks([tiny_store], max_cells=100, seed=0)
    assert 0 < len(sampled) < len(sample_blocks([tiny_store], max_cells=10_000, seed=0))


def _run(tiny_store, tmp_path, *extra):
    cfg = load_config(None, [f"data.stores=[{tiny_store.path}]", "data.num_workers=0", "tokenizer.max_len=64",
                             "train.global_batch_cells=32", "train.micro_batch_cells=32", "tracking.enabled=false",
                             "train.engine=plain", "train.max_steps=1", "train.lr=1e-12", "train.warmup_steps=1",
                             "model.size=tiny", *extra])  # one step that moves nothing measurable
    return Pretrained.load(pretrain(cfg, tmp_path))


def test_a_fresh_pretraining_starts_from_the_coexpression_axes_and_they_separate_types(tiny_store, tmp_path):
    started = _run(tiny_store, tmp_path / "coexpression")
    plain = _run(tiny_store, tmp_path / "normal", "model.gene_init=normal")
    table = started.model.embedding.gene.weight.detach()
    tokenizer = started.tokenizer
    rows = kept_normalised_rows([tiny_store], DataConfig(), tokenizer.normalised_values, "dataset", 20000, 0)
    expected = coexpression_loadings(rows, started.model.config.d_model, 0.02, seed=0)
    np.testing.assert_allclose(table[N_SPECIAL:].numpy(), expected, atol=1e-9)
    torch.testing.assert_close(table[:N_SPECIAL], plain.model.embedding.gene.weight.detach()[:N_SPECIAL],
                               atol=1e-9, rtol=0)
    assert json.loads((tmp_path / "coexpression" / "final" / "model_config.json").read_text()
                      )["config"]["gene_init"] == "coexpression"
    # before any step, the co-expression start already separates the simulated cell types
    import anndata

    counts = sp.vstack([sp.csr_matrix((d, i, p), shape=(len(p) - 1, tiny_store.n_genes)) for p, i, d in
                        (tiny_store.read_rows(k, 0, s.n_cells) for k, s in enumerate(tiny_store.shards))])
    adata = anndata.AnnData(counts.astype(np.float32))
    adata.var_names = tiny_store.vocab.gene_ids
    adata.obs["dataset"] = tiny_store.obs_values("dataset")
    types, studies = tiny_store.obs_values("cell_type"), tiny_store.obs_values("dataset")
    scores = {}
    for name, model in (("coexpression", started), ("normal", plain)):
        z = model.embed(adata, "dataset", key_added=None, progress=False)
        within_study = [adjusted_rand_score(types[studies == s], KMeans(4, n_init=10, random_state=0)
                                            .fit_predict(z[studies == s])) for s in sorted(set(studies))]
        scores[name] = (silhouette_score(z, types), min(within_study))
    # measured: silhouette 0.31 vs 0.09, worst within-study ARI 0.88 vs 0.39
    assert scores["coexpression"][0] > 0.2 and scores["coexpression"][0] > scores["normal"][0] + 0.15, scores
    assert scores["coexpression"][1] > 0.8 > scores["normal"][1], scores
