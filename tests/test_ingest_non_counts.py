"""Values that are not counts (log-normalised, CP10k) are refused unless prepare.allow_non_counts;
when allowed they are recorded, shown by `scfm info`, and the count-based QC rules are skipped."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from data_pipelines import SourceSpec, prepare
from data_pipelines.report import describe_store, info_text
from sc_fm.cli import main
from sc_fm.config import PrepareConfig, QCConfig
from sc_fm.errors import InputDataError
from test_ingest_formats import human_atlas, permissive

COUNT_QC = QCConfig(min_genes=1, min_counts=500, max_mito_fraction=0.05)


def log_normalised(n_cells=40):
    adata = human_atlas(n_cells=n_cells)
    x = sp.csr_matrix(adata.X, dtype=np.float64)
    x = sp.csr_matrix(x.multiply(1e4 / x.sum(axis=1)))
    x.data = np.log1p(x.data)
    adata.X = x
    return adata


def test_log_normalised_input_is_refused_by_default(tmp_path):
    path = tmp_path / "lognorm.h5ad"
    log_normalised().write_h5ad(path)
    with pytest.raises(InputDataError, match="not whole-number counts") as err:
        prepare([path], tmp_path / "s.zarr", permissive(), progress=False)
    message = err.value.message
    assert str(path) in message and "BC00000" in message and "prepare.allow_non_counts=true" in message
    assert not (tmp_path / "s.zarr").exists()


def test_allowed_non_counts_are_recorded_and_skip_count_qc(tmp_path, capsys):
    adata = log_normalised()
    config = PrepareConfig(qc=COUNT_QC, allow_non_counts=True)
    summary = prepare([SourceSpec(adata=adata, dataset="lognorm")], tmp_path / "s.zarr", config,
                      progress=False)
    store = summary.store
    assert store.n_cells == 40  # min_counts=500 and the mito rule would drop every log-valued cell
    row = store.manifest[0]
    assert row["values"] == "non-counts"
    assert row["qc_skipped"] == ["min_counts", "max_counts", "max_mito_fraction"]
    assert store.shard(0)["data"].dtype == np.float32
    assert "note: non-counts in lognorm" in summary.table()
    info = describe_store(store)
    assert info["non_count_sources"] == ["lognorm"]
    assert "non-counts in lognorm" in info_text(info) and "min_counts" in info_text(info)
    assert main(["info", str(store.path)]) == 0
    assert "values      non-counts in lognorm" in capsys.readouterr().out


def test_counts_are_unchanged_with_the_option_on(tmp_path):
    adata = human_atlas(n_cells=40)
    qc = QCConfig(min_genes=1, min_counts=int(np.median(np.asarray(adata.X.sum(axis=1)).ravel())), max_mito_fraction=None)
    strict = prepare([SourceSpec(adata=adata, dataset="a")], tmp_path / "a.zarr",
                     PrepareConfig(qc=qc), progress=False).store
    loose = prepare([SourceSpec(adata=adata, dataset="a")], tmp_path / "b.zarr",
                    PrepareConfig(qc=qc, allow_non_counts=True), progress=False).store
    assert strict.manifest[0]["values"] == loose.manifest[0]["values"] == "counts"
    assert strict.manifest[0]["drops"] == loose.manifest[0]["drops"]
    assert strict.manifest[0]["drops"]["min_counts"] > 0
    assert "values      counts" in info_text(describe_store(strict))


def test_a_fraction_past_the_sample_is_caught_by_the_shard_writer(tmp_path):
    """One fractional value after the first 65,536 of a block: the cheap sample misses it, the
    shard writer (which checks every stored value) does not."""
    adata = human_atlas(n_cells=400, n_genes=200)
    x = sp.csr_matrix(np.random.default_rng(0).integers(1, 5, adata.shape).astype(np.float32))
    x.data[-1] = 2.5
    adata.X = x
    with pytest.raises(InputDataError, match="not whole-number counts"):
        prepare([SourceSpec(adata=adata, dataset="late")], tmp_path / "s.zarr", permissive(), progress=False)
    assert not (tmp_path / "s.zarr").exists()
    store = prepare([SourceSpec(adata=adata, dataset="late")], tmp_path / "s.zarr",
                    permissive(allow_non_counts=True), progress=False).store
    assert store.manifest[0]["values"] == "non-counts"
