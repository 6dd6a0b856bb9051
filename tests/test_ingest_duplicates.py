"""The same source twice (one path named twice, or content already in the store) is refused
unless prepare.allow_duplicate_sources=true."""

from __future__ import annotations

import shutil

import pytest

from data_pipelines import prepare
from data_pipelines.merge import merge_stores
from sc_fm.errors import InputDataError
from sc_fm.store import CorpusStore
from test_ingest_formats import human_atlas, permissive


@pytest.fixture
def h5ad(tmp_path):
    path = tmp_path / "pbmc.h5ad"
    human_atlas(n_cells=30).write_h5ad(path)
    return path


def test_same_path_twice_in_one_call(tmp_path, h5ad):
    same = [h5ad, tmp_path / "." / "pbmc.h5ad"]
    with pytest.raises(InputDataError, match="named twice") as err:
        prepare(same, tmp_path / "s.zarr", permissive(), progress=False)
    assert "allow_duplicate_sources=true" in err.value.message and str(h5ad) in err.value.message
    assert not (tmp_path / "s.zarr").exists()
    allowed = prepare(same, tmp_path / "s.zarr", permissive(allow_duplicate_sources=True), progress=False)
    assert allowed.store.n_cells == 60


def test_same_content_under_two_paths(tmp_path, h5ad):
    copy = tmp_path / "copy.h5ad"
    shutil.copy(h5ad, copy)
    with pytest.raises(InputDataError, match="same content") as err:
        prepare([h5ad, copy], tmp_path / "s.zarr", permissive(), progress=False)
    assert "copy.h5ad" in err.value.message and "pbmc.h5ad" in err.value.message
    assert not (tmp_path / "s.zarr").exists()


def test_append_of_a_source_already_in_the_store(tmp_path, h5ad):
    store = prepare([h5ad], tmp_path / "s.zarr", permissive(), progress=False).store
    before = sorted(p.name for p in (store.path / "shards").iterdir())
    copy = tmp_path / "again.h5ad"
    shutil.copy(h5ad, copy)
    for source in (h5ad, copy):
        with pytest.raises(InputDataError, match="already in the store"):
            prepare([source], store.path, permissive(), append=True, progress=False)
    after = CorpusStore(store.path)
    assert after.n_cells == 30 and len(after.manifest) == 1
    assert sorted(p.name for p in (store.path / "shards").iterdir()) == before
    allowed = prepare([copy], store.path, permissive(allow_duplicate_sources=True), append=True,
                      progress=False)
    assert allowed.store.n_cells == 60


def test_merge_refuses_duplicate_parts_and_sources(tmp_path, h5ad):
    part = prepare([h5ad], tmp_path / "part.zarr", permissive(), progress=False).store.path
    with pytest.raises(InputDataError, match="named twice"):
        merge_stores([part, part], tmp_path / "m.zarr")
    shutil.copytree(part, tmp_path / "twin.zarr")
    with pytest.raises(InputDataError, match="same content"):
        merge_stores([part, tmp_path / "twin.zarr"], tmp_path / "m.zarr")
    assert not (tmp_path / "m.zarr").exists()
    merge_stores([part], tmp_path / "m.zarr")
    with pytest.raises(InputDataError, match="already in the store"):
        merge_stores([tmp_path / "twin.zarr"], tmp_path / "m.zarr", append=True)
    assert merge_stores([part, tmp_path / "twin.zarr"], tmp_path / "m2.zarr",
                        allow_duplicate_sources=True).store.n_cells == 60


def test_the_same_cells_resaved_with_other_compression_are_a_duplicate(tmp_path, h5ad, capsys):
    """File checksums differ; the cells (barcodes and count totals, in any order) do not."""
    import anndata

    from sc_fm.cli import main

    store = prepare([h5ad], tmp_path / "s.zarr", permissive(), progress=False).store
    adata = anndata.read_h5ad(h5ad)
    resaved = tmp_path / "resaved.h5ad"
    adata[::-1].copy().write_h5ad(resaved, compression="gzip")
    with pytest.raises(InputDataError, match="same cells .* already in the store"):
        prepare([resaved], store.path, permissive(), append=True, progress=False)
    other = tmp_path / "other.h5ad"
    changed = adata.copy()
    changed.X[0] = changed.X[0] * 2  # one cell's total differs: other data
    changed.write_h5ad(other, compression="gzip")
    flags = ["qc.min_genes=0", "qc.min_counts=0", "qc.max_mito_fraction=null", "--quiet"]
    assert main(["prepare", str(other), "-o", str(store.path), "--append", *flags]) == 0
    assert main(["prepare", str(resaved), "-o", str(store.path), "--append", *flags]) == 2
    assert "--allow-duplicates" in capsys.readouterr().err
    assert main(["prepare", str(resaved), "-o", str(store.path), "--append", "--allow-duplicates", *flags]) == 0
    assert CorpusStore(store.path).n_cells == 90
