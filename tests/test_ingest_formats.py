"""Every input format round-trips: each kept cell and value in the store equals the source
after gene mapping, with its metadata and QC figures."""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from blake3 import blake3

from data_pipelines import SourceSpec, prepare
from data_pipelines.readers import open_reader
from sc_fm.config import PrepareConfig, QCConfig
from sc_fm.simulate import AtlasSpec, simulate_atlas
from sc_fm.vocab import default_vocab

PERMISSIVE_QC = QCConfig(min_genes=1, min_counts=1, max_mito_fraction=None)


def permissive(**kwargs) -> PrepareConfig:
    return PrepareConfig(qc=PERMISSIVE_QC, **kwargs)


def human_atlas(n_cells: int = 90, n_genes: int = 50, seed: int = 3) -> anndata.AnnData:
    """A simulated atlas labelled with real GENCODE genes (the first 13 are mitochondrial)."""
    vocab = default_vocab()
    mito = [i for i, s in enumerate(vocab.symbols) if s.startswith("MT-")][:13]
    rest = np.random.default_rng(seed).choice(np.setdiff1d(np.arange(vocab.n_genes), mito),
                                              n_genes - 13, replace=False)
    picks = np.concatenate([mito, rest])
    spec = AtlasSpec(n_cells=n_cells, n_genes=n_genes, n_studies=2, seed=seed, empty_fraction=0.0,
                     low_quality_fraction=0.0, gene_ids=[vocab.gene_ids[i] for i in picks])
    adata = simulate_atlas(spec)
    adata.var["symbol"] = [vocab.symbols[i] for i in picks]
    adata.obs_names = [f"BC{i:05d}" for i in range(adata.n_obs)]
    return adata


def expected_in_vocab(x: sp.spmatrix, names: list[str]) -> sp.csr_matrix:
    """The dense-free reference: source columns moved (and added) onto vocabulary positions."""
    vocab = default_vocab()
    cols = vocab.lookup(names)
    ok = cols >= 0
    move = sp.csr_matrix((np.ones(ok.sum()), (np.flatnonzero(ok), cols[ok])),
                         shape=(len(names), vocab.n_genes))
    return sp.csr_matrix(sp.csr_matrix(x, dtype=np.float64) @ move)


def store_matrix(store) -> sp.csr_matrix:
    parts = []
    for k, info in enumerate(store.shards):
        indptr, indices, data = store.read_rows(k, 0, info.n_cells)
        assert all(np.all(np.diff(indices[a:b]) > 0) for a, b in zip(indptr[:-1], indptr[1:]))
        parts.append(sp.csr_matrix((data, indices, indptr), shape=(info.n_cells, store.n_genes)))
    return sp.vstack(parts).tocsr()


def assert_same_matrix(got: sp.spmatrix, expected: sp.spmatrix) -> None:
    assert got.shape == expected.shape
    diff = sp.csr_matrix(got, dtype=np.float64) - sp.csr_matrix(expected, dtype=np.float64)
    assert (diff != 0).nnz == 0


# --- writers for each input format -------------------------------------------------------

def write_h5ad(adata: anndata.AnnData, path: Path, kind: str) -> SourceSpec:
    out = adata.copy()
    x = sp.csr_matrix(adata.X)
    if kind == "csc":
        out.X = sp.csc_matrix(x)
    elif kind == "dense":
        out.X = x.toarray()
    elif kind == "layer":
        out.layers["counts"] = x
        out.X = sp.csr_matrix(x.shape, dtype=np.float32)
    elif kind == "raw":
        out.raw = out.copy()
        out.X = sp.csr_matrix(x.shape, dtype=np.float32)
    out.write_h5ad(path)
    layer = {"layer": "counts", "raw": "raw"}.get(kind)
    return SourceSpec(path=path, layer=layer, assay="10x_3p_v3", obs_columns={"cell_type": "cell_type"})


def write_10x_h5(adata: anndata.AnnData, path: Path) -> None:
    x = sp.csc_matrix(sp.csr_matrix(adata.X).T)  # genes x cells, CSC over cells
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(adata.obs_names, dtype="S")
        m["data"], m["indices"], m["indptr"] = x.data.astype(np.int32), x.indices, x.indptr
        m["shape"] = np.array(x.shape, dtype=np.int32)
        feats = m.create_group("features")
        feats["id"] = np.array(adata.var_names, dtype="S")
        feats["name"] = np.array(adata.var["symbol"], dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * adata.n_vars, dtype="S")


def write_10x_mtx(adata: anndata.AnnData, folder: Path) -> None:
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as f:
        scipy.io.mmwrite(f, sp.coo_matrix(sp.csr_matrix(adata.X).T.astype(np.int64)))
    pd.DataFrame({"id": adata.var_names, "name": adata.var["symbol"], "type": "Gene Expression"}).to_csv(
        folder / "features.tsv.gz", sep="\t", header=False, index=False)
    pd.Series(adata.obs_names).to_csv(folder / "barcodes.tsv.gz", sep="\t", header=False, index=False)


def write_table(adata: anndata.AnnData, path: Path, genes_by_cells: bool) -> Path:
    dense = pd.DataFrame(sp.csr_matrix(adata.X).toarray(), index=adata.obs_names, columns=adata.var_names)
    (dense.T if genes_by_cells else dense).to_csv(path, sep="\t" if ".tsv" in path.name else ",")
    meta = path.with_name("meta.csv")
    adata.obs[["cell_type"]].to_csv(meta)
    return meta


def make_source(kind: str, adata: anndata.AnnData, tmp: Path) -> SourceSpec:
    if kind.startswith("h5ad-"):
        return write_h5ad(adata, tmp / "atlas.h5ad", kind.split("-", 1)[1])
    if kind == "anndata":
        return SourceSpec(adata=adata, dataset="atlas", assay="10x_3p_v3",
                          obs_columns={"cell_type": "cell_type"})
    if kind == "10x-h5":
        write_10x_h5(adata, tmp / "atlas.h5")
        return SourceSpec(path=tmp / "atlas.h5", assay="10x_3p_v3")
    if kind == "10x-mtx":
        write_10x_mtx(adata, tmp / "filtered_feature_bc_matrix")
        return SourceSpec(path=tmp / "filtered_feature_bc_matrix", dataset="atlas", assay="10x_3p_v3")
    genes_by_cells = kind == "csv-genes-x-cells"
    path = tmp / ("atlas.csv" if genes_by_cells else "atlas.tsv.gz")
    meta = write_table(adata, path, genes_by_cells)
    return SourceSpec(path=path, metadata=meta, assay="10x_3p_v3", obs_columns={"cell_type": "cell_type"})


FORMATS = ["h5ad-csr", "h5ad-csc", "h5ad-dense", "h5ad-layer", "h5ad-raw", "anndata", "10x-h5", "10x-mtx",
           "csv-genes-x-cells", "tsv-cells-x-genes"]


@pytest.mark.parametrize("kind", FORMATS)
def test_format_round_trips(kind, tmp_path):
    adata = human_atlas()
    spec = make_source(kind, adata, tmp_path)
    summary = prepare([spec], tmp_path / "store.zarr", permissive(read_block_cells=32, shard_cells=50,
                                                                  chunk_cells=16), progress=False)
    store = summary.store
    # a streamed file is cut into equal row ranges (one task and shard each); others fill shards
    streamed = kind in {"h5ad-csr", "h5ad-dense", "h5ad-layer", "h5ad-raw", "10x-h5"}
    assert store.n_cells == adata.n_obs
    assert [s.n_cells for s in store.shards] == ([45, 45] if streamed else [50, 40])
    assert_same_matrix(store_matrix(store), expected_in_vocab(adata.X, list(adata.var_names)))
    assert store.shard(0)["data"].dtype == np.int32
    np.testing.assert_array_equal(store.obs_values("dataset"), ["atlas"] * adata.n_obs)
    np.testing.assert_array_equal(store.obs_values("assay"), ["10x_3p_v3"] * adata.n_obs)
    np.testing.assert_array_equal(store.obs_values("species"), ["human"] * adata.n_obs)
    np.testing.assert_allclose(store.obs_numeric("n_counts"), np.asarray(adata.X.sum(axis=1)).ravel())
    np.testing.assert_array_equal(store.obs_numeric("n_genes"), np.diff(sp.csr_matrix(adata.X).indptr))
    if spec.obs_columns:
        np.testing.assert_array_equal(store.obs_values("cell_type"), adata.obs["cell_type"].to_numpy())
    row = store.manifest[0]
    assert row["cells_read"] == row["cells_kept"] == adata.n_obs
    assert row["genes_mapped"] == adata.n_vars and row["unmapped_genes"] == 0
    if spec.path is None:
        assert row["checksum"] is None
    elif Path(spec.path).is_file():
        assert row["checksum"] == "blake3:" + blake3(Path(spec.path).read_bytes()).hexdigest()
    else:  # a folder: each file's relative name, then its bytes, in name order
        digest = blake3()
        for file in sorted(p for p in Path(spec.path).rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(spec.path)).encode() + file.read_bytes())
        assert row["checksum"] == "blake3:" + digest.hexdigest()


def test_sc_mixology_count_tables_round_trip(tmp_path):
    """The shipped real counts (gzipped genes x cells CSV + metadata) through the source list."""
    config_dir = Path(__file__).resolve().parent.parent / "configs" / "data"
    summary = prepare([config_dir / "sc_mixology.yaml"], tmp_path / "mix.zarr", PrepareConfig(),
                      progress=False)
    store = summary.store
    resources = Path(__file__).resolve().parent.parent / "sc_fm" / "resources" / "sc_mixology_3cl"
    offset = 0
    for protocol, row in zip(("celseq2", "dropseq"), store.manifest):
        counts = pd.read_csv(resources / f"sc_{protocol}.count.csv.gz", index_col=0)
        meta = pd.read_csv(resources / f"sc_{protocol}.metadata.csv.gz", index_col=0).loc[counts.columns]
        x = counts.to_numpy(dtype=np.float64).T
        totals, n_genes = x.sum(axis=1), (x > 0).sum(axis=1)
        mito = default_vocab().mito_mask()[np.maximum(default_vocab().lookup(list(counts.index)), 0)]
        mito &= default_vocab().lookup(list(counts.index)) >= 0
        keep = (totals >= 500) & (n_genes >= 200) & (x[:, mito].sum(axis=1) / totals <= 0.2)
        assert row["cells_read"] == len(keep) and row["cells_kept"] == keep.sum()
        assert sum(row["drops"].values()) == (~keep).sum()
        cells = slice(offset, offset + int(keep.sum()))
        got = store_matrix(store)[cells]
        assert_same_matrix(got, expected_in_vocab(sp.csr_matrix(x[keep]), list(counts.index)))
        np.testing.assert_array_equal(store.obs_values("cell_type")[cells],
                                      meta["cell_line_demuxlet"].to_numpy()[keep])
        np.testing.assert_allclose(store.obs_numeric("n_counts")[cells], totals[keep])
        offset += int(keep.sum())
    assert store.n_cells == offset
    assert set(store.obs_values("assay")) == {"cel-seq2", "drop-seq"}


def test_non_gene_features_are_left_out(tmp_path):
    """An antibody-capture feature named like a gene symbol must not become that gene."""
    adata = human_atlas(n_cells=30, n_genes=20)
    write_10x_mtx(adata, tmp_path / "tenx")
    features = pd.read_csv(tmp_path / "tenx" / "features.tsv.gz", sep="\t", header=None)
    features.iloc[-1] = ["CD3_TotalSeqB", "CD3E", "Antibody Capture"]
    features.to_csv(tmp_path / "tenx" / "features.tsv.gz", sep="\t", header=False, index=False)
    summary = prepare([tmp_path / "tenx"], tmp_path / "s.zarr", permissive(), progress=False)
    row = summary.sources[0]
    assert row["non_gene_features"] == 1 and row["genes_mapped"] == 19 and row["unmapped_genes"] == 0
    kept = sp.csr_matrix(adata.X)[:, :19]
    assert_same_matrix(store_matrix(summary.store), expected_in_vocab(kept, list(adata.var_names[:19])))


def test_read_blocks_are_bounded_by_nonzeros(tmp_path):
    """With a row pointer on disk, a block stops at ``read_block_nnz`` nonzeros (a deeper study
    gets shorter blocks; a row over the budget is a block of its own) and the blocks still
    cover every row once, so the store equals the source."""
    adata = human_atlas(n_cells=41, n_genes=60)
    rows = [np.arange(2)] * 20 + [np.arange(10)] * 20 + [np.arange(50)]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    adata.X = sp.csr_matrix((np.ones(indptr[-1], np.float32), np.concatenate(rows), indptr), shape=(41, 60))
    path = tmp_path / "deep.h5ad"
    adata.write_h5ad(path)
    reader = open_reader(SourceSpec(path=path), default_vocab())
    try:
        bounds = reader.block_bounds(16, 40, 0, 41)
    finally:
        reader.close()
    assert bounds == [(0, 16), (16, 23), (23, 27), (27, 31), (31, 35), (35, 39), (39, 40), (40, 41)]
    store = prepare([SourceSpec(path=path)], tmp_path / "s.zarr",
                    permissive(read_block_cells=16, read_block_nnz=40), progress=False).store
    assert_same_matrix(store_matrix(store), expected_in_vocab(adata.X, list(adata.var_names)))
