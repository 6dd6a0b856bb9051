"""``Pretrained.embed`` and ``scfm embed``: parity with the model forward, determinism, results in
``.obsm``, untouched AnnData contents, batch-aware normalisers, and errors on bad input."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from sc_fm.cli import main
from sc_fm.errors import InputDataError
from sc_fm.config import EmbedConfig, InputSettings
from sc_fm.pretrained import EMBEDDING_KEY, Pretrained, embed_h5ad


@pytest.fixture(scope="module")
def input_h5ad(tiny_atlas, tmp_path_factory):
    """The first 150 tiny-atlas cells with extra contents that embedding must leave alone."""
    adata = tiny_atlas[:150].copy()
    adata.layers["counts"] = adata.X.copy()
    adata.uns["note"] = {"kept": 1}
    path = tmp_path_factory.mktemp("embed") / "in.h5ad"
    adata.write_h5ad(path)
    return path


def _forward_embedding(pretrained, adata) -> np.ndarray:
    """The model's own forward on the tokenizer's unmasked batch of the same cells."""
    x = sp.csr_matrix(adata.X)
    cells = pretrained.tokenizer.encode_rows(x.indptr, x.indices, x.data, {}, with_expression=True)
    batch = pretrained.tokenizer.mask_and_pack(cells, None, np.arange(adata.n_obs))
    with torch.inference_mode():
        return pretrained.model(batch)["cell_embedding"].numpy()


def test_embedding_equals_model_forward_and_is_deterministic(tiny_checkpoint, tiny_atlas):
    pretrained = Pretrained.load(tiny_checkpoint)
    adata = tiny_atlas[:70].copy()
    first = pretrained.embed(adata, InputSettings(batch_cells=16, block_cells=32), progress=False)
    assert adata.obsm[EMBEDDING_KEY] is first  # scanpy's habit: in place, and returned
    second = pretrained.embed(adata, InputSettings(batch_cells=64), key_added="X_again", progress=False)
    assert first.shape == (70, pretrained.model.embedding_dim) and "X_again" in adata.obsm
    np.testing.assert_array_equal(first, pretrained.embed(adata, InputSettings(batch_cells=16, block_cells=32), key_added=None,
                                                          progress=False))
    np.testing.assert_allclose(first, second, atol=1e-5)  # batching does not change a cell's embedding
    np.testing.assert_allclose(first, _forward_embedding(pretrained, adata), atol=1e-5)


def test_gene_order_and_names_do_not_matter(tiny_checkpoint, tiny_atlas):
    pretrained = Pretrained.load(tiny_checkpoint)
    adata = tiny_atlas[:40].copy()
    order = np.random.default_rng(0).permutation(adata.n_vars)
    shuffled = adata[:, order].copy()
    shuffled.var_names = [f"{g}.7" for g in shuffled.var_names]  # versioned Ensembl IDs
    embs = [pretrained.embed(a, progress=False) for a in (adata, shuffled)]
    np.testing.assert_allclose(embs[0], embs[1], atol=1e-5)


def test_batch_aware_normalisers_come_from_the_input(tiny_checkpoint, tiny_atlas, tmp_path):
    pretrained = Pretrained.load(tiny_checkpoint)
    assert pretrained.tokenizer.config.stats_group == "dataset"
    adata = tiny_atlas.copy()
    adata.obs["protocol"] = adata.obs["assay"].astype(str)
    inputs = pretrained.input_cells(adata, InputSettings(batch_key="protocol", block_cells=128))
    tokenizer, groups = inputs.tokenizer, inputs.groups
    assert sorted(tokenizer.normalisers["dataset"]) == sorted(adata.obs["protocol"].unique())
    assert list(groups[:3]) == list(adata.obs["protocol"][:3])
    # the input's per-batch medians equal the store's per-assay ones (same cells, same grouping)
    stored = pretrained.tokenizer.normalisers
    for assay in adata.obs["assay"].unique():
        store_median = tiny_atlas_assay_median(stored, assay)
        if store_median is not None:
            np.testing.assert_allclose(tokenizer.normalisers["dataset"][assay], store_median, rtol=1e-6)
    plain = pretrained.input_cells(adata)
    assert plain.tokenizer is pretrained.tokenizer and plain.groups is None
    backed_path = tmp_path / "all.h5ad"
    adata.write_h5ad(backed_path)
    backed = anndata.read_h5ad(backed_path, backed="r")  # read twice in blocks, never whole
    np.testing.assert_allclose(pretrained.embed(backed, InputSettings(batch_key="protocol", block_cells=128), key_added=None,
                                                progress=False),
                               pretrained.embed(adata, "protocol", key_added=None, progress=False), atol=1e-5)
    backed.file.close()


def tiny_atlas_assay_median(normalisers: dict, assay: str):
    """In the tiny atlas each study has its own assay, so a dataset's medians are its assay's."""
    names = {"10x_3p_v3": "study_0", "10x_3p_v2": "study_1", "drop-seq": "study_2"}
    return normalisers["dataset"].get(names.get(assay, ""))


def test_cli_embed_adds_only_x_scfm(tiny_checkpoint, input_h5ad, tmp_path, capsys):
    out = tmp_path / "out.h5ad"
    assert main(["embed", str(tiny_checkpoint), str(input_h5ad), "-o", str(out), "--batch-key", "dataset",
                 "--condition", "assay=10x_3p_v3", "--no-progress"]) == 0
    before, after = anndata.read_h5ad(input_h5ad), anndata.read_h5ad(out)
    assert set(after.obsm) == set(before.obsm) | {"X_scfm"}
    assert after.obsm["X_scfm"].shape == (150, 128)  # the tiny model's pooled state
    assert (after.X != before.X).nnz == 0 and (after.layers["counts"] != before.layers["counts"]).nnz == 0
    pd.testing.assert_frame_equal(after.obs, before.obs)
    pd.testing.assert_frame_equal(after.var, before.var)
    np.testing.assert_array_equal(after.obsm["X_latent"], before.obsm["X_latent"])
    assert after.uns["note"]["kept"] == 1
    assert "300/300 genes (100.0%)" in capsys.readouterr().out
    fixed = embed_h5ad(tiny_checkpoint, input_h5ad, tmp_path / "dropped.h5ad", EmbedConfig(InputSettings(batch_key="dataset")),
                       progress=False)
    dropped = anndata.read_h5ad(fixed.output).obsm["X_scfm"]
    # conditions reach only the decoder by default, so the embedding does not depend on them
    np.testing.assert_allclose(dropped, after.obsm["X_scfm"], atol=1e-5)


def test_low_gene_overlap_states_overlap_and_threshold(tiny_checkpoint, tiny_atlas, tmp_path, capsys):
    adata = tiny_atlas[:20].copy()
    adata.var_names = [f"GENE{i}" if i >= 20 else g for i, g in enumerate(adata.var_names)]
    path = tmp_path / "foreign.h5ad"
    adata.write_h5ad(path)
    assert main(["embed", str(tiny_checkpoint), str(path), "-o", str(tmp_path / "o.h5ad")]) == 2
    err = capsys.readouterr().err
    assert "20 of 300 genes (6.7%)" in err and "threshold is 10%" in err and "Fix:" in err


def test_a_small_panel_all_in_the_vocabulary_is_refused_below_the_gene_count(tiny_checkpoint, tiny_atlas, tmp_path,
                                                                             capsys):
    panel = tiny_atlas[:20, :60].copy()  # every gene maps (100%), but only 60 of them
    path = tmp_path / "panel.h5ad"
    panel.write_h5ad(path)
    assert main(["embed", str(tiny_checkpoint), str(path), "-o", str(tmp_path / "o.h5ad")]) == 2
    err = capsys.readouterr().err
    assert "only 60 of the input's genes" in err and "at least 100" in err and "min_genes_mapped" in err
    assert main(["embed", str(tiny_checkpoint), str(path), "-o", str(tmp_path / "o.h5ad"), "--no-progress",
                 "--min-genes-mapped", "60"]) == 0
    assert anndata.read_h5ad(tmp_path / "o.h5ad").obsm["X_scfm"].shape[0] == 20


@pytest.mark.parametrize("transform, message", [
    (lambda x: np.log1p(x), "not integers"),
    (lambda x: x - 1.0, "negative"),
])
def test_non_count_data_is_refused(tiny_checkpoint, tiny_atlas, transform, message):
    pretrained = Pretrained.load(tiny_checkpoint)
    adata = tiny_atlas[:20].copy()
    adata.X = transform(adata.X.toarray().astype(np.float64))
    with pytest.raises(InputDataError, match=message):
        pretrained.embed(adata, progress=False)


def test_missing_batch_column_and_unknown_condition(tiny_checkpoint, input_h5ad, tmp_path, capsys):
    assert main(["embed", str(tiny_checkpoint), str(input_h5ad), "-o", str(tmp_path / "o.h5ad"),
                 "--batch-key", "protocol"]) == 2
    assert "no column 'protocol' in .obs" in capsys.readouterr().err
    assert main(["embed", str(tiny_checkpoint), str(input_h5ad), "-o", str(tmp_path / "o.h5ad"),
                 "--condition", "assay=visium"]) == 2
    assert "'visium' is not a known assay" in capsys.readouterr().err


def test_incompatible_checkpoint_is_refused(tiny_checkpoint, input_h5ad, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").unlink()
    assert main(["embed", str(broken), str(input_h5ad), "-o", str(tmp_path / "o.h5ad")]) == 2
    assert "model.safetensors is missing" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    vocab = other / "tokenizer" / "vocab.tsv"
    first_gene = vocab.read_text().splitlines()[2].split("\t")[0]
    vocab.write_text(vocab.read_text().replace(first_gene, "ENSG99999999999"))
    assert main(["embed", str(other), str(input_h5ad), "-o", str(tmp_path / "o.h5ad")]) == 2
    assert "vocabulary" in capsys.readouterr().err
