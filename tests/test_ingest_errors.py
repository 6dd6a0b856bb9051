"""Each bad input gets its own error naming the file, the problem and the fix, and leaves no store."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from data_pipelines import SourceSpec, prepare
from sc_fm.config import PrepareConfig, QCConfig
from sc_fm.errors import InputDataError
from sc_fm.store import CorpusStore
from sc_fm.vocab import GeneVocab
from test_ingest_formats import human_atlas, permissive, write_10x_mtx, write_table


def h5ad_with(tmp: Path, edit) -> Path:
    adata = human_atlas(n_cells=40)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    edit(adata)
    adata.write_h5ad(tmp / "bad.h5ad")
    return tmp / "bad.h5ad"


def negative(a):
    a.X.data[5] = -3


def nan(a):
    a.X.data[7] = np.nan


def infinite(a):
    a.X.data[2] = np.inf


def duplicated_ids(a):
    a.var_names = [a.var_names[0]] + list(a.var_names[:-1])


def unknown_ids(a):
    a.var_names = [f"gene{i}" for i in range(a.n_vars)]
    a.var["symbol"] = a.var_names


def mismatched_gene_table(tmp: Path) -> Path:
    write_10x_mtx(human_atlas(n_cells=20), tmp / "tenx")
    features = pd.read_csv(tmp / "tenx" / "features.tsv.gz", sep="\t", header=None)
    features.iloc[:-1].to_csv(tmp / "tenx" / "features.tsv.gz", sep="\t", header=False, index=False)
    return tmp / "tenx"


def truncated_h5ad(tmp: Path) -> Path:
    path = h5ad_with(tmp, lambda a: None)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_gzip_table(tmp: Path) -> Path:
    path = tmp / "counts.csv.gz"
    write_table(human_atlas(n_cells=200), path, genes_by_cells=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def empty_file(tmp: Path) -> Path:
    (tmp / "empty.csv").write_bytes(b"")
    return tmp / "empty.csv"


def empty_gzip_table(tmp: Path) -> Path:
    with gzip.open(tmp / "empty.tsv.gz", "wb"):
        pass
    return tmp / "empty.tsv.gz"


def metadata_missing_cells(tmp: Path) -> SourceSpec:
    path = tmp / "counts.csv"
    meta = write_table(human_atlas(n_cells=20), path, genes_by_cells=True)
    pd.read_csv(meta, index_col=0).iloc[3:].to_csv(meta)
    return SourceSpec(path=path, metadata=meta)


CASES = {
    "negative counts": (lambda t: h5ad_with(t, negative), "negative values in 1 cell", "on_negative=skip"),
    "NaN": (lambda t: h5ad_with(t, nan), "non-finite", "on_nonfinite=skip"),
    "Inf": (lambda t: h5ad_with(t, infinite), "non-finite", "on_nonfinite=skip"),
    "gene table width": (mismatched_gene_table, "gene table has 49 entries but the count matrix has 50",
                         "same row order"),
    "duplicated gene IDs": (lambda t: h5ad_with(t, duplicated_ids), "map to a vocabulary gene",
                            "deduplicate"),
    "no recognisable genes": (lambda t: h5ad_with(t, unknown_ids), "no gene identifier matches",
                              "prepare.vocab"),
    "empty file": (empty_file, "empty", "re-export"),
    "empty gzip table": (empty_gzip_table, "no columns", "header row"),
    "truncated h5ad": (truncated_h5ad, "truncated or corrupt", "re-download"),
    "truncated gzip table": (truncated_gzip_table, "truncated or corrupt", "re-download"),
    "metadata lacks cells": (metadata_missing_cells, "lacks 3 of the 20 cells", "metadata row"),
    "missing obs column": (lambda t: SourceSpec(path=h5ad_with(t, lambda a: None),
                                                obs_columns={"batch": "nope"}),
                           "no cell metadata column 'nope'", "use one of"),
    "missing layer": (lambda t: SourceSpec(path=h5ad_with(t, lambda a: None), layer="counts"),
                      "no layer 'counts'", "layer"),
    "unknown format": (lambda t: (t / "x.loom").write_bytes(b"1") and t / "x.loom", "unknown input format",
                       ".h5ad"),
    "missing file": (lambda t: t / "nowhere.h5ad", "does not exist", "check the source path"),
}


def assert_no_store(output: Path) -> None:
    assert not output.exists()
    assert not list(output.parent.glob(f"{output.name}.partial-*"))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_with_no_store(case, tmp_path):
    make, problem, fix = CASES[case]
    source = make(tmp_path)
    spec = source if isinstance(source, SourceSpec) else SourceSpec(path=source)
    output = tmp_path / "store.zarr"
    config = permissive(duplicate_genes="error") if case == "duplicated gene IDs" else permissive()
    with pytest.raises(InputDataError) as caught:
        prepare([spec], output, config, progress=False)
    message = caught.value.message
    assert problem in message and fix in message
    assert str(spec.path) in message  # names the file
    assert_no_store(output)


def test_skip_records_bad_cells_instead(tmp_path):
    def poison(a):
        rows = np.repeat(np.arange(a.n_obs), np.diff(a.X.indptr))
        a.X.data[np.flatnonzero(rows == 4)[0]] = np.nan
        a.X.data[np.flatnonzero(rows == 9)[0]] = -1

    path = h5ad_with(tmp_path, poison)
    qc = QCConfig(min_genes=1, min_counts=1, max_mito_fraction=None, on_nonfinite="skip", on_negative="skip")
    summary = prepare([path], tmp_path / "s.zarr", PrepareConfig(qc=qc), progress=False)
    row = summary.sources[0]
    assert row["drops"]["nonfinite"] == 1 and row["drops"]["negative"] == 1
    assert summary.store.n_cells == 38


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_in_a_later_source_leaves_no_store(workers, tmp_path):
    good = tmp_path / "good.h5ad"
    shutil.copy(h5ad_with(tmp_path, lambda a: None), good)
    bad = h5ad_with(tmp_path, negative)
    with pytest.raises(InputDataError, match="negative"):
        prepare([good, SourceSpec(path=bad)], tmp_path / "s.zarr", permissive(workers=workers), progress=False)
    assert_no_store(tmp_path / "s.zarr")


def test_append_with_a_different_vocabulary_is_refused(tmp_path):
    path = h5ad_with(tmp_path, lambda a: None)
    store = prepare([path], tmp_path / "s.zarr", permissive(), progress=False).store
    before = sorted(p.name for p in (store.path / "shards").iterdir())
    other = tmp_path / "other_vocab.tsv"
    GeneVocab(store.vocab.gene_ids[:1000], name="other").save(other)
    with pytest.raises(InputDataError, match="vocabulary") as caught:
        prepare([path], store.path, permissive(vocab=str(other)), append=True, progress=False)
    assert str(store.path) in caught.value.message
    assert sorted(p.name for p in (store.path / "shards").iterdir()) == before
    assert CorpusStore(store.path).n_cells == store.n_cells


def test_existing_output_is_not_overwritten(tmp_path):
    path = h5ad_with(tmp_path, lambda a: None)
    prepare([path], tmp_path / "s.zarr", permissive(), progress=False)
    with pytest.raises(InputDataError, match="already exists"):
        prepare([path], tmp_path / "s.zarr", permissive(), progress=False)
