"""A TileDB-SOMA experiment as a source: written from an AnnData in the test
(``tiledbsoma.io.from_anndata``), ingested with a filter and column mapping, and compared with
ingesting the same cells from the AnnData directly; the folder recognised by itself; bad input."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines import SourceSpec, prepare
from sc_fm.cli import main
from sc_fm.config import PrepareConfig, QCConfig
from sc_fm.errors import InputDataError
from sc_fm.store import CorpusStore

tiledbsoma = pytest.importorskip("tiledbsoma")
CONFIG = PrepareConfig(vocab="corpus", shard_cells=500, chunk_cells=64, read_block_cells=97,
                       qc=QCConfig(min_genes=0, min_counts=0, max_mito_fraction=None))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_atlas):
    import tiledbsoma.io

    adata = tiny_atlas.copy()
    adata.obs["is_primary_data"] = np.arange(adata.n_obs) % 3 != 0
    uri = str(tmp_path_factory.mktemp("soma") / "atlas.soma")
    tiledbsoma.io.from_anndata(uri, adata, measurement_name="RNA", X_layer_name="counts")
    return uri, adata


def test_soma_ingest_equals_the_anndata_cells(experiment, tmp_path):
    uri, adata = experiment
    mapping = {"cell_type": "cell_type", "batch": "donor"}
    flt = "is_primary_data == True and assay != 'nothing'"
    soma = prepare([SourceSpec(soma=uri, filter=flt, dataset="atlas", obs_columns=mapping)],
                   tmp_path / "soma.zarr", CONFIG, progress=False).store
    chosen = adata[adata.obs["is_primary_data"].to_numpy()].copy()
    direct = prepare([SourceSpec(adata=chosen, dataset="atlas", obs_columns=mapping)],
                     tmp_path / "direct.zarr", CONFIG, progress=False).store
    assert soma.n_cells == chosen.n_obs == 400 and soma.vocab_hash == direct.vocab_hash
    for k, info in enumerate(soma.shards):
        for x, y in zip(soma.read_rows(k, 0, info.n_cells), direct.read_rows(k, 0, info.n_cells)):
            np.testing.assert_array_equal(x, y)
    for column in ("cell_type", "batch", "dataset"):
        np.testing.assert_array_equal(soma.obs_values(column), direct.obs_values(column))
    row = soma.manifest[0]
    assert (row["path"], row["filter"], row["measurement"], row["format"]) == (uri, flt, "RNA", "soma")
    assert row["checksum"].startswith("soma-blake3:") and row["cells_read"] == 400


def test_a_soma_folder_is_a_source_by_itself(experiment, tmp_path):
    uri, adata = experiment
    out = tmp_path / "all.zarr"
    assert main(["prepare", uri, "-o", str(out), "--quiet", "prepare.vocab=corpus",
                 "prepare.qc.min_genes=0", "prepare.qc.min_counts=0", "prepare.qc.max_mito_fraction=null"]) == 0
    store = CorpusStore(out)
    assert store.n_cells == adata.n_obs and store.manifest[0]["dataset"] == "atlas"


@pytest.mark.parametrize("spec, message", [
    (dict(measurement="ATAC"), "has no measurement 'ATAC'"),
    (dict(layer="normalised"), "has no X layer 'normalised'"),
    (dict(filter="is_primary_data == True and is_primary_data == False"), "selects no cells"),
    (dict(filter="no_such_column == 1"), "cannot be applied"),
    (dict(obs_columns={"batch": "no_such_column"}), "obs has no column 'no_such_column'"),
])
def test_bad_soma_sources_are_one_paragraph(experiment, tmp_path, spec, message):
    uri, _ = experiment
    with pytest.raises(InputDataError, match=message):
        prepare([SourceSpec(soma=uri, **spec)], tmp_path / "x.zarr", CONFIG, progress=False)
    assert not (tmp_path / "x.zarr").exists()


def test_a_missing_experiment_is_one_paragraph(tmp_path):
    with pytest.raises(InputDataError, match="is not a TileDB-SOMA experiment"):
        prepare([SourceSpec(soma=str(tmp_path / "nowhere.soma"))], tmp_path / "x.zarr", CONFIG, progress=False)
