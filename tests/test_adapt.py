"""``scfm adapt``: a checkpoint keeps training, unsupervised, on a user's own cells."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from sc_fm.adapt import ADAPT_FILE, adapt, run_config
from sc_fm.cli import main
from sc_fm.config import AdaptConfig, InputSettings
from sc_fm.errors import InputDataError
from sc_fm.pretrained import Pretrained
from sc_fm.pretrained.axes import AXES_FILE


@pytest.fixture(scope="module")
def adapted(tiny_checkpoint, tiny_atlas, tmp_path_factory):
    base = Pretrained.load(tiny_checkpoint)
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    adata = tiny_atlas[:200].copy()
    adata.obs["plate"] = np.where(np.arange(adata.n_obs) % 2, "plate_a", "plate_b")
    out = tmp_path_factory.mktemp("adapt") / "adapted"
    result = adapt(base, adata, out, AdaptConfig(input=InputSettings(batch_key="plate"), steps=3), ["train.warmup_steps=1"])
    return base, before, adata, out, result


def test_adapted_directory_is_a_checkpoint_with_new_batches_as_conditions(adapted):
    base, before, adata, out, result = adapted
    assert Pretrained.load(out).name == base.name and (out / ADAPT_FILE).is_file()
    for key, values in base.tokenizer.condition_vocabs.items():
        grown = result.tokenizer.condition_vocabs[key]
        assert grown[: len(values)] == values and grown[len(values):] == ["plate_a", "plate_b"]
        j = base.tokenizer.config.condition_keys.index(key)
        table = result.model.decoder.offsets[j].weight  # conditions reach the decoder (model/decoder.py)
        assert len(table) == len(values) + 1 + 2
    assert sorted(result.tokenizer.normalisers[base.tokenizer.config.stats_group]) == ["plate_a", "plate_b"]
    moved = [k for k, v in result.model.state_dict().items() if k in before and v.shape == before[k].shape
             and not torch.equal(v, before[k])]
    assert moved  # the weights were trained
    for key, value in base.model.state_dict().items():
        assert torch.equal(value, before[key]), key  # the caller's model is untouched
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(np.isfinite(row["loss"]) for row in rows)
    assert rows[-1]["mixing_loss"] > 0  # the plates were pulled together (the batch objectives)
    embedding = result.embed(adata, "plate", progress=False)
    assert embedding.shape == (adata.n_obs, 10) and np.isfinite(embedding).all()


def test_adapted_checkpoint_embeds_on_the_input_cells_principal_axes(adapted):
    _, _, adata, out, result = adapted
    assert (out / AXES_FILE).is_file() and result.embedding_dim == 10
    pooled = Pretrained(result.model, result.tokenizer).embed(adata, "plate", key_added=None, progress=False)
    assert pooled.shape[1] == result.model.embedding_dim > 10
    reference = PCA(10, svd_solver="full").fit(pooled.astype(np.float64))
    embedding = Pretrained.load(out).embed(adata, "plate", key_added=None, progress=False)
    signs = np.sign((embedding * reference.transform(pooled)).sum(axis=0))
    np.testing.assert_allclose(embedding, signs * reference.transform(pooled), atol=1e-4)
    np.testing.assert_allclose(embedding.var(axis=0, ddof=1), reference.explained_variance_, rtol=1e-4)


def test_embedding_axes_zero_keeps_the_full_pooled_state(tiny_checkpoint, tiny_atlas, tmp_path, capsys):
    adata = tiny_atlas[:100].copy()
    adata.write_h5ad(tmp_path / "in.h5ad")
    out = tmp_path / "a"
    assert main(["adapt", str(tiny_checkpoint), str(tmp_path / "in.h5ad"), "-o", str(out), "--steps", "1",
                 "adapt.embedding_axes=0", "train.warmup_steps=1"]) == 0
    result = Pretrained.load(out)
    assert not (out / AXES_FILE).exists() and result.axes is None
    assert f"embeds on the {result.model.embedding_dim}-wide pooled state" in capsys.readouterr().out
    assert result.embed(adata, key_added=None, progress=False).shape == (100, result.model.embedding_dim)


def test_adapt_refuses_bad_input_before_any_work(tiny_checkpoint, tiny_atlas, tmp_path, capsys):
    path = tmp_path / "in.h5ad"
    adata = tiny_atlas[:100].copy()
    adata.write_h5ad(path)
    assert main(["adapt", str(tiny_checkpoint), str(path), "--batch-key", "plate", "-o", str(tmp_path / "a")]) == 2
    assert "no column 'plate'" in capsys.readouterr().err
    logged = adata.copy()
    logged.X = np.log1p(logged.X.toarray())
    with pytest.raises(InputDataError, match="count-based pretraining objectives"):
        adapt(Pretrained.load(tiny_checkpoint), logged, tmp_path / "b", AdaptConfig(steps=1))
    few = adata[:10].copy()
    with pytest.raises(InputDataError, match="one adaptation step takes 32"):
        adapt(Pretrained.load(tiny_checkpoint), few, tmp_path / "c", AdaptConfig(steps=1))
    foreign = adata.copy()
    foreign.var_names = [f"GENE{i}" for i in range(foreign.n_vars)]
    with pytest.raises(InputDataError, match="genes"):
        adapt(Pretrained.load(tiny_checkpoint), foreign, tmp_path / "d", AdaptConfig(steps=1))
    assert not list(tmp_path.glob(".*adapt-*"))  # nothing half-written left behind


def test_adaptation_rate_is_adapt_lr_unless_an_override_names_train_lr(tiny_checkpoint):
    pretrained = Pretrained.load(tiny_checkpoint)
    assert run_config(pretrained, AdaptConfig(), ["s.zarr"], None, n_cells=600).train.lr == 1e-4
    assert run_config(pretrained, AdaptConfig(lr=3e-4), ["s.zarr"], None, ["train.lr=5e-4"],
                      n_cells=600).train.lr == 5e-4
    own = run_config(pretrained, AdaptConfig(lr=None), ["s.zarr"], None, n_cells=600)
    assert own.train.lr == 1e-3  # the run's own


def test_adaptation_adds_the_batch_objectives_unless_switched_off_or_overridden(tiny_checkpoint):
    pretrained = Pretrained.load(tiny_checkpoint)
    assert pretrained.model.config.cell_mixing_weight == 0.0  # pretraining leaves them off
    model = run_config(pretrained, AdaptConfig(), ["s.zarr"], None, n_cells=600).model
    assert (model.cell_mixing_weight, model.cell_mixing_bank) == (3.0, 600)  # the bank: the input's cells
    adversary = (model.cell_adversary_weight, model.cell_adversary, model.cell_adversary_lr_scale)
    assert adversary == (1.0, "confusion", 10)
    large = run_config(pretrained, AdaptConfig(), ["s.zarr"], None, n_cells=10 ** 6)
    assert large.model.cell_mixing_bank == 4096
    off = run_config(pretrained, AdaptConfig(mixing_weight=0, adversary_weight=0), ["s.zarr"], None,
                     n_cells=600).model
    assert (off.cell_mixing_weight, off.cell_adversary_weight) == (0.0, 0.0)
    overridden = run_config(pretrained, AdaptConfig(), ["s.zarr"], None, ["model.cell_mixing_weight=7"],
                            n_cells=600).model
    assert overridden.cell_mixing_weight == 7.0


def test_without_a_batch_column_the_batch_objectives_have_nothing_to_mix(tiny_checkpoint, tiny_atlas,
                                                                          tmp_path):
    adata = tiny_atlas[:100].copy()
    adapt(Pretrained.load(tiny_checkpoint), adata, tmp_path / "a", AdaptConfig(steps=2),
          ["train.warmup_steps=1"])
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [row["mixing_loss"] for row in rows] == [0.0, 0.0]
    assert all(np.isfinite(row["loss"]) for row in rows)
