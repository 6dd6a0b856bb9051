"""Gene harmonisation, QC, statistics, sharding, append and parallel ingestion."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from data_pipelines import SourceSpec, prepare
from data_pipelines.genes import GeneMapping, to_vocabulary
from sc_fm.config import PrepareConfig, QCConfig
from sc_fm.errors import InputDataError
from sc_fm.simulate import AtlasSpec, simulate_atlas
from sc_fm.vocab import default_vocab
from test_ingest_formats import (assert_same_matrix, expected_in_vocab, human_atlas, permissive,
                                 store_matrix)


def test_gene_names_are_harmonised(tmp_path):
    """Version suffixes, symbols, unknown genes and duplicates (summed, or first kept)."""
    adata = human_atlas(n_cells=30, n_genes=20)
    vocab = default_vocab()
    ids = list(adata.var_names)
    names = [f"{ids[0]}.7", vocab.symbols[vocab.lookup([ids[1]])[0]].lower()] + ids[2:17] + \
        ["NOT_A_GENE", "ALSO_NOT", ids[2]]  # the last one duplicates the third gene
    adata.var_names = names
    adata.var["symbol"] = names
    for rule in ("sum", "first"):
        summary = prepare([SourceSpec(adata=adata, dataset="d")], tmp_path / f"{rule}.zarr",
                          permissive(duplicate_genes=rule), progress=False)
        expected_cols = np.array(names, dtype=object)
        if rule == "first":
            expected_cols[-1] = "NOT_A_GENE"  # a dropped duplicate behaves like an unknown gene
        expected = expected_in_vocab(adata.X, list(expected_cols))
        assert_same_matrix(store_matrix(summary.store), expected)
        row = summary.sources[0]
        assert row["unmapped_genes"] == 2 and row["unmapped_examples"] == ["NOT_A_GENE", "ALSO_NOT"]
        assert row["duplicate_genes"] == 1 and row["genes_mapped"] == 18


def test_to_vocabulary_sorts_shuffled_columns_and_sums_duplicates():
    """A source in another gene order than the vocabulary, with two genes landing together
    and one dropped, equals the dense reference row by row (sorted, no zeros)."""
    rng = np.random.default_rng(3)
    block = sp.random(40, 30, density=0.3, format="csr", random_state=4,
                      data_rvs=lambda n: rng.integers(1, 20, n)).astype(np.int32)
    columns = rng.permutation(100)[:30]
    columns[7], columns[11] = columns[3], -1
    mapping = GeneMapping(columns, np.zeros(30, bool), "index", 30, 29, 1, [], 0, 1)
    out = to_vocabulary(block, mapping, 100)
    expected = np.zeros((40, 100), np.int64)
    for src in np.flatnonzero(columns >= 0):
        expected[:, columns[src]] += block[:, src].toarray().ravel()
    assert out.has_canonical_format and np.all(out.data != 0)
    np.testing.assert_array_equal(out.toarray(), expected)


@pytest.mark.filterwarnings("ignore:Observation names are not unique")
def test_each_qc_rule_drops_and_counts_its_cells(tmp_path):
    vocab = default_vocab()
    mito_ids = [g for g, s in zip(vocab.gene_ids, vocab.symbols) if s.startswith("MT-")][:2]
    genes = mito_ids + vocab.gene_ids[100:110]
    x = np.full((9, 12), 20.0)
    x[1] = 0  # empty
    x[2, :] = 0
    x[2, 2:5] = 30  # 90 counts: below min_counts
    x[3] = 400  # 4,800 counts: above max_counts
    x[4, 4:] = 0
    x[4, 2:4] = 200  # 4 genes: below min_genes
    x[5, :2] = 1000  # mitochondria-heavy
    barcodes = [f"c{i}" for i in range(8)] + ["c0"]  # the last one repeats the first barcode
    adata = anndata.AnnData(sp.csr_matrix(x), obs=pd.DataFrame(index=barcodes), var=pd.DataFrame(index=genes))
    qc = QCConfig(min_genes=5, min_counts=100, max_counts=4000, max_mito_fraction=0.5)
    summary = prepare([SourceSpec(adata=adata, dataset="qc")], tmp_path / "s.zarr", PrepareConfig(qc=qc),
                      progress=False)
    assert summary.sources[0]["drops"] == {"nonfinite": 0, "negative": 0, "duplicate_barcode": 1, "empty": 1,
                                           "min_counts": 1, "max_counts": 1, "min_genes": 1,
                                           "max_mito_fraction": 1}
    np.testing.assert_allclose(summary.store.obs_numeric("n_counts"), [240, 240, 240])
    np.testing.assert_allclose(summary.store.obs_numeric("mito_fraction"), [40 / 240] * 3)


def test_statistics_equal_a_dense_computation(tmp_path):
    spec = AtlasSpec(n_cells=300, n_genes=80, n_studies=3, seed=5, empty_fraction=0, low_quality_fraction=0)
    adata = simulate_atlas(spec)
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 3 == 0, "b0", "b1")
    sources = [SourceSpec(adata=adata[adata.obs["dataset"] == d].copy(), dataset=d, assay=a,
                          obs_columns={"batch": "batch"})
               for d, a in zip(["study_0", "study_1", "study_2"], ["x", "y", "x"])]
    config = permissive(vocab="corpus", stats_groups=["dataset", "assay", "batch"], read_block_cells=64)
    store = prepare(sources, tmp_path / "s.zarr", config, progress=False).store
    dense = np.concatenate([s.adata.X.toarray() for s in sources]).astype(np.float64)
    norm = dense / dense.sum(axis=1, keepdims=True) * 1e4
    labels = {"dataset": store.obs_values("dataset"), "assay": store.obs_values("assay"),
              "batch": store.obs_values("batch")}
    checks = [("global", "all", np.ones(len(dense), bool))]
    checks += [(g, v, labels[g] == v) for g in labels for v in np.unique(labels[g])]
    assert sorted(store.stats("assay")) == ["x", "y"] and sorted(store.stats("batch")) == ["b0", "b1"]
    for group, value, rows in checks:
        stats = store.stats(group)[value]
        assert stats.n_cells == rows.sum()
        np.testing.assert_array_equal(stats.n_expr, (dense[rows] > 0).sum(axis=0))
        np.testing.assert_allclose(stats.sum_counts, dense[rows].sum(axis=0))
        np.testing.assert_allclose(stats.sum_norm, norm[rows].sum(axis=0), rtol=1e-9)
        np.testing.assert_allclose(stats.sumsq_norm, (norm[rows] ** 2).sum(axis=0), rtol=1e-9)
        for g in np.flatnonzero(stats.n_expr >= 15)[:10]:
            exact = np.median(norm[rows][norm[rows][:, g] > 0, g])
            assert abs(np.log1p(stats.nonzero_median[g]) - np.log1p(exact)) <= 10.0 / 160


def _tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_append_adds_shards_and_updates_statistics(tmp_path):
    adata = simulate_atlas(AtlasSpec(n_cells=240, n_genes=60, n_studies=2, seed=11, empty_fraction=0,
                                     low_quality_fraction=0))
    first = SourceSpec(adata=adata[:150].copy(), dataset="a", assay="x")
    second = SourceSpec(adata=adata[150:].copy(), dataset="b", assay="x")
    config = permissive(vocab="corpus", shard_cells=64)
    store = prepare([first], tmp_path / "s.zarr", config, progress=False).store
    old_shards = {s.name: _tree_digest(store.path / "shards" / s.name) for s in store.shards}
    appended = prepare([second], store.path, permissive(shard_cells=64), append=True, progress=False).store
    oneshot = prepare([first, second], tmp_path / "one.zarr", config, progress=False).store
    assert {n: _tree_digest(appended.path / "shards" / n) for n in old_shards} == old_shards
    assert appended.n_cells == 240 and len(appended.shards) == 3 + 2
    assert_same_matrix(store_matrix(appended), store_matrix(oneshot))
    assert [r["dataset"] for r in appended.manifest] == ["a", "b"]
    for group in ("global", "dataset", "assay"):
        for value, stats in oneshot.stats(group).items():
            got = appended.stats(group)[value]
            assert got.n_cells == stats.n_cells
            np.testing.assert_array_equal(got.hist, stats.hist)
            np.testing.assert_allclose(got.sum_norm, stats.sum_norm, rtol=1e-12)


def test_parallel_ingestion_equals_serial(tmp_path):
    adata = simulate_atlas(AtlasSpec(n_cells=200, n_genes=50, n_studies=2, seed=2, empty_fraction=0.05,
                                     low_quality_fraction=0.05))
    paths = []
    for i, part in enumerate((adata[:90], adata[90:])):
        paths.append(tmp_path / f"part{i}.h5ad")
        part.copy().write_h5ad(paths[-1])
    config = PrepareConfig(vocab="corpus", shard_cells=40, qc=QCConfig(min_genes=20, min_counts=100,
                                                                                 max_mito_fraction=None))
    serial = prepare(paths, tmp_path / "serial.zarr", config, progress=False).store
    config.workers = 2
    parallel = prepare(paths, tmp_path / "parallel.zarr", config, progress=False).store
    assert_same_matrix(store_matrix(parallel), store_matrix(serial))
    assert [s.n_cells for s in parallel.shards] == [s.n_cells for s in serial.shards]
    without_names = [[{k: v for k, v in row.items() if k != "shards"} for row in s.manifest]
                     for s in (serial, parallel)]
    assert without_names[0] == without_names[1]
    for group in ("global", "dataset"):
        for value, stats in serial.stats(group).items():
            np.testing.assert_array_equal(parallel.stats(group)[value].sum_norm, stats.sum_norm)
    assert sum(sum(r["drops"].values()) for r in serial.manifest) > 0


def test_non_integral_values_are_stored_as_float32_exactly(tmp_path):
    adata = human_atlas(n_cells=40)
    x = sp.csr_matrix(adata.X, dtype=np.float64)
    x.data[x.indptr[30]] += 0.5  # the first non-integral value appears in the second read block
    adata.X = x
    store = prepare([SourceSpec(adata=adata, dataset="f")], tmp_path / "s.zarr",
                    permissive(read_block_cells=16, allow_non_counts=True), progress=False).store
    assert store.shard(0)["data"].dtype == np.float32
    assert_same_matrix(store_matrix(store), expected_in_vocab(x, list(adata.var_names)))


def test_corpus_vocabulary_is_the_union_of_source_ids(tmp_path):
    a = human_atlas(n_cells=20, n_genes=20, seed=1)
    b = human_atlas(n_cells=20, n_genes=20, seed=2)
    b.var_names = [f"{g}.3" for g in b.var_names]
    store = prepare([SourceSpec(adata=a, dataset="a"), SourceSpec(adata=b, dataset="b")], tmp_path / "s.zarr",
                    permissive(vocab="corpus"), progress=False).store
    union = sorted(set(a.var_names) | {g.split(".")[0] for g in b.var_names})
    assert store.vocab.gene_ids == union and store.vocab.name == "corpus"
    assert store.vocab.symbols[union.index(a.var_names[0])] == a.var["symbol"].iloc[0]


def test_source_list_paths_are_relative_to_the_list(tmp_path):
    adata = human_atlas(n_cells=20)
    (tmp_path / "data").mkdir()
    adata.write_h5ad(tmp_path / "data" / "x.h5ad")
    (tmp_path / "sources.yaml").write_text(
        "sources:\n  - path: data/x.h5ad\n    dataset: mine\n    assay: 10x\n    tissue: blood\n")
    store = prepare([tmp_path / "sources.yaml"], tmp_path / "s.zarr", permissive(), progress=False).store
    assert set(store.obs_values("tissue")) == {"blood"} and set(store.obs_values("dataset")) == {"mine"}
    assert store.manifest[0]["path"] == str((tmp_path / "data" / "x.h5ad").resolve())


def test_nothing_passing_qc_is_an_error(tmp_path):
    adata = human_atlas(n_cells=20)
    with pytest.raises(InputDataError, match="no cell passed QC"):
        prepare([SourceSpec(adata=adata, dataset="d")], tmp_path / "s.zarr",
                PrepareConfig(qc=QCConfig(min_genes=10**6)), progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_merged_part_stores_equal_one_ingest(tmp_path):
    """The cluster fan-out: per-task stores merged into one equal a single ingest."""
    from data_pipelines import merge_stores

    a, b = human_atlas(n_cells=50, seed=4), human_atlas(n_cells=40, seed=5)
    specs = [SourceSpec(adata=a, dataset="a", assay="x"), SourceSpec(adata=b, dataset="b", assay="y")]
    parts = [prepare([s], tmp_path / f"part{i}.zarr", permissive(), progress=False).store.path
             for i, s in enumerate(specs)]
    merged = merge_stores(parts, tmp_path / "merged.zarr").store
    oneshot = prepare(specs, tmp_path / "one.zarr", permissive(), progress=False).store
    assert_same_matrix(store_matrix(merged), store_matrix(oneshot))
    assert [r["dataset"] for r in merged.manifest] == ["a", "b"]
    assert all((merged.path / "shards" / name).is_dir() for r in merged.manifest for name in r["shards"])
    for group in ("global", "dataset", "assay"):
        for value, stats in oneshot.stats(group).items():
            np.testing.assert_array_equal(merged.stats(group)[value].hist, stats.hist)
            np.testing.assert_allclose(merged.stats(group)[value].sum_norm, stats.sum_norm, rtol=1e-12)
    np.testing.assert_array_equal(merged.obs_values("dataset"), oneshot.obs_values("dataset"))
