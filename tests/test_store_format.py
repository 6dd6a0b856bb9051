"""The corpus store round-trips cells, metadata and statistics, and appends atomically."""

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

from sc_fm.errors import InputDataError
from sc_fm.stats import GeneStatsAccumulator
from sc_fm.store import CorpusStore, ShardAppender, StoreWriter


def test_rows_round_trip(tiny_store, tiny_atlas):
    x = tiny_atlas.X
    for k, (lo, hi) in enumerate(((0, 350), (350, 600))):
        indptr, indices, data = tiny_store.read_rows(k, 10, 74)
        expected = x[lo + 10: lo + 74].tocsr()
        expected.sort_indices()
        np.testing.assert_array_equal(indptr, expected.indptr)
        np.testing.assert_array_equal(indices, expected.indices)
        np.testing.assert_array_equal(data, expected.data)
        assert data.dtype == np.int32


def test_metadata_codes_and_stats(tiny_store, tiny_atlas):
    values = tiny_store.obs_values("dataset")
    np.testing.assert_array_equal(values, tiny_atlas.obs["dataset"].to_numpy())
    stats = tiny_store.stats("global")["all"]
    dense = tiny_atlas.X.toarray().astype(np.float64)
    np.testing.assert_array_equal(stats.n_expr, (dense > 0).sum(axis=0))
    np.testing.assert_allclose(stats.sum_counts, dense.sum(axis=0))
    norm = dense / dense.sum(axis=1, keepdims=True) * 1e4
    np.testing.assert_allclose(stats.sum_norm, norm.sum(axis=0), rtol=1e-9)
    for g in np.flatnonzero(stats.n_expr > 20)[:20]:  # histogram median within one bin (6.5%)
        exact = np.median(norm[norm[:, g] > 0, g])
        assert abs(np.log1p(stats.nonzero_median[g]) - np.log1p(exact)) <= 10.0 / 160
    per_dataset = tiny_store.stats("dataset")
    assert sum(s.n_cells for s in per_dataset.values()) == tiny_atlas.n_obs


def test_failed_append_leaves_store_as_it_was(tiny_store, tmp_path):
    import shutil

    path = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store.path, path)
    before = sorted(p.name for p in (path / "shards").iterdir())
    with pytest.raises(RuntimeError):
        with StoreWriter(path, tiny_store.vocab, append=True) as writer:
            z = np.zeros(3, np.int64)
            writer.add_shard(z, np.zeros(0, np.int32), np.zeros(0, np.int32), {}, {}, "x")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in (path / "shards").iterdir()) == before
    assert CorpusStore(path).n_cells == tiny_store.n_cells


def test_new_store_invisible_until_commit(tiny_store, tmp_path):
    path = tmp_path / "new.zarr"
    writer = StoreWriter(path, tiny_store.vocab)
    z = np.zeros(3, np.int64)
    writer.add_shard(z, np.zeros(0, np.int32), np.zeros(0, np.int32), {}, {}, "x")
    assert not path.exists()
    with pytest.raises(InputDataError, match="not a corpus store"):
        CorpusStore(path)
    writer.commit({"global": {"all": GeneStatsAccumulator(tiny_store.n_genes)}}, [])
    assert CorpusStore(path).n_cells == 2


def test_append_with_other_vocabulary_is_refused(tiny_store):
    from sc_fm.vocab import GeneVocab

    with pytest.raises(InputDataError, match="vocabulary"):
        StoreWriter(tiny_store.path, GeneVocab(["ENSG00000000001"]), append=True)


@pytest.mark.parametrize("scale, stored", [(1.0, np.int32), (0.5, np.float32), (2.5e8, np.int32)])
def test_shard_appender_round_trips_irregular_blocks(tmp_path, scale, stored):
    """Blocks of any size meet chunk boundaries anywhere; whole-number floats become int32,
    halves stay float32 (whole numbers past int32 are refused: tests/test_ingest_ranges.py)."""
    rng = np.random.default_rng(0)
    matrix = sp.random(300, 50, density=0.2, format="csr", random_state=1,
                       data_rvs=lambda n: rng.integers(1, 9, n).astype(np.float32))
    matrix.data *= np.float32(scale)
    appender = ShardAppender(tmp_path, "s", chunk_cells=16)
    bounds = [0, 1, 8, 40, 41, 170, 300]
    for lo, hi in zip(bounds, bounds[1:]):
        rows = matrix[lo:hi]
        appender.append(rows.indptr, rows.indices, rows.data, {"dataset": np.full(hi - lo, "d")},
                        {"n_counts": np.asarray(rows.sum(axis=1)).ravel()})
    assert appender.close() == (300, matrix.nnz)
    group = zarr.open_group(tmp_path / "shards" / "s", mode="r")
    assert group["data"].dtype == stored
    np.testing.assert_array_equal(group["indptr"][:], matrix.indptr)
    np.testing.assert_array_equal(group["indices"][:], matrix.indices)
    np.testing.assert_array_equal(group["data"][:], matrix.data.astype(stored))
