"""Fine-tuning: high held-out accuracy on separable simulated types, predictions in .obs,
donor-grouped splits, reloadable checkpoints, frozen encoder in linear-probe mode, bad input."""

from __future__ import annotations

import dataclasses
import json

import anndata
import numpy as np
import pytest
import torch

from sc_fm.cli import main
from sc_fm.config import InputSettings
from sc_fm.errors import InputDataError
from sc_fm.config import TrainConfig
from sc_fm.finetune import (PREDICTION_KEY, SPLIT_KEY, FinetuneConfig, class_weights, encoder_lr, finetune,
                            group_split, load_finetuned, reverse_gradient)
from sc_fm.pretrained import Pretrained


@pytest.fixture(scope="module")
def finetuned(tiny_checkpoint, tiny_atlas, tmp_path_factory):
    adata = tiny_atlas[:300].copy()
    config = FinetuneConfig(label_key="cell_type", input=InputSettings(batch_key="dataset"), adversary_key="dataset",
                            epochs=3, val_fraction=0.25, adversarial_weight=0.1)
    out = tmp_path_factory.mktemp("ft") / "ft"
    pretrained = Pretrained.load(tiny_checkpoint)
    before = {k: v.clone() for k, v in pretrained.model.state_dict().items()}
    result = finetune(pretrained, adata, out, config, progress=False, device="cpu")
    # a full fine-tune trains a copy: the caller's model is as it was
    assert all(torch.equal(v, before[k]) for k, v in pretrained.model.state_dict().items())
    assert all(p.requires_grad for p in pretrained.model.parameters())
    return result, adata, config


def test_full_finetune_reaches_high_held_out_accuracy(finetuned):
    result, adata, _ = finetuned
    assert result.accuracy > 0.85 and result.macro_f1 > 0.85
    assert result.n_val + result.n_train == adata.n_obs and result.n_val == pytest.approx(75, abs=3)
    val = adata.obs[SPLIT_KEY] == "validation"
    assert (adata.obs.loc[val, PREDICTION_KEY] == adata.obs.loc[val, "cell_type"]).mean() == pytest.approx(
        result.accuracy)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_finetuned_directory_reloads_to_the_same_predictions(finetuned):
    result, adata, config = finetuned
    tuned = load_finetuned(result.directory)
    predicted = np.asarray(tuned.classes)[tuned.probabilities(adata, config.input).argmax(axis=1)]
    np.testing.assert_array_equal(predicted, adata.obs[PREDICTION_KEY].to_numpy())
    assert Pretrained.load(result.directory).name == "sc_fm-tiny"  # usable by embed / benchmark


def test_contexts_are_read_on_the_training_cells_most_variable_genes(tiny_checkpoint, tiny_atlas, tmp_path):
    """The panel is the training cells' HVGs in vocabulary space, saved and reloaded; reading cells
    on it tokenises them exactly as an input that measured only those genes."""
    from sc_fm.classify import hvg_genes

    pretrained = Pretrained.load(tiny_checkpoint)
    adata = tiny_atlas[:200].copy()
    config = FinetuneConfig(label_key="cell_type", max_steps=2, context_hvg=60)
    result = finetune(pretrained, adata, tmp_path / "ft", config, progress=False)
    train = np.flatnonzero(adata.obs[SPLIT_KEY].to_numpy() == "train")
    variable = hvg_genes(adata.X[train], 60)
    expected = np.sort(pretrained.vocab.lookup(list(adata.var_names[variable])))
    tuned = load_finetuned(result.directory)
    np.testing.assert_array_equal(tuned.panel, expected[expected >= 0])
    assert 0 < len(tuned.panel) <= 60
    on_panel = pretrained.input_cells(adata, config.input, panel=tuned.panel).tokenize()
    measured = adata[:, variable].copy()
    subset = pretrained.input_cells(measured, dataclasses.replace(config.input, min_genes_mapped=1)).tokenize()
    for key, value in on_panel.to_arrays().items():
        np.testing.assert_array_equal(value, subset.to_arrays()[key], err_msg=key)
    every_gene = load_finetuned(finetune(pretrained, adata, tmp_path / "all", dataclasses.replace(
        config, context_hvg=None), progress=False).directory)
    assert every_gene.panel is None
    meta_path = result.directory / "finetune.json"
    meta = json.loads(meta_path.read_text())
    for bad, message in (("ENSG1", "must be a list"), (["NOT_A_GENE"], "outside the checkpoint's vocabulary")):
        meta_path.write_text(json.dumps({**meta, "context_genes": bad}))
        with pytest.raises(InputDataError, match=message):
            load_finetuned(result.directory)


def test_linear_probe_keeps_the_encoder_frozen(tiny_checkpoint, tiny_atlas, tmp_path):
    pretrained = Pretrained.load(tiny_checkpoint)
    before = {k: v.clone() for k, v in pretrained.model.state_dict().items()}
    adata = tiny_atlas[:200].copy()
    config = FinetuneConfig(label_key="cell_type", mode="linear", epochs=1)
    result = finetune(pretrained, adata, tmp_path / "probe", config, progress=False)
    for key, value in pretrained.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    probe = Pretrained.load(result.directory).model.state_dict()
    assert all(torch.equal(v, before[k]) for k, v in probe.items())  # the saved encoder did not move either
    assert all(p.requires_grad for p in pretrained.model.parameters())  # the caller's model is not frozen


def test_weight_average_is_an_exponential_moving_average_of_every_step(tiny_checkpoint):
    """After the first step the average is those weights; after each later one, d * average +
    (1 - d) * weights; 0 switches it off."""
    from sc_fm.finetune import CellClassifier
    from sc_fm.finetune.train import weight_average

    classifier = CellClassifier(Pretrained.load(tiny_checkpoint).model, 3)
    assert weight_average(classifier, 0.0) is None
    averaged = weight_average(classifier, 0.9)
    expected = None
    for value in (1.0, 3.0, -2.0):
        with torch.no_grad():
            classifier.head.weight.fill_(value)
        averaged.update_parameters(classifier)
        expected = value if expected is None else 0.9 * expected + 0.1 * value
        torch.testing.assert_close(averaged.module.head.weight, torch.full_like(classifier.head.weight, expected))


def test_the_saved_classifier_is_the_averaged_one(tiny_checkpoint, tiny_atlas, tmp_path):
    """The head as trained (no average) and the averaged head differ, on the same steps and seed."""
    pretrained = Pretrained.load(tiny_checkpoint)
    adata = tiny_atlas[:160].copy()
    heads = {}
    for decay in (0.0, 0.5):
        config = FinetuneConfig(label_key="cell_type", mode="linear", max_steps=6, select_epoch=False,
                                weight_average=decay)
        heads[decay] = load_finetuned(finetune(pretrained, adata, tmp_path / str(decay), config,
                                               progress=False).directory).classifier.head.weight
    assert not torch.allclose(heads[0.0], heads[0.5])


def test_balanced_class_weights_match_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 3, 3, 3, 3])  # class 2 has no training cell
    weights = class_weights(y, 4, "balanced")
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 3]), y=y.numpy())
    np.testing.assert_allclose(weights[[0, 1, 3]].numpy(), expected, rtol=1e-6)
    assert weights[2] == 0 and weights.dtype == torch.float32
    assert class_weights(y, 4, "none") is None


def test_class_weighted_loss_changes_what_the_head_learns(tiny_checkpoint, tiny_atlas, tmp_path):
    pretrained = Pretrained.load(tiny_checkpoint)
    adata = tiny_atlas[:200].copy()
    heads = {}
    for scheme in ("none", "balanced"):
        config = FinetuneConfig(label_key="cell_type", mode="linear", max_steps=3, class_weight=scheme)
        tuned = load_finetuned(finetune(pretrained, adata, tmp_path / scheme, config, progress=False).directory)
        heads[scheme] = tuned.classifier.head.weight.detach().clone()
    assert not torch.equal(heads["none"], heads["balanced"])


def test_encoder_lr_defaults_to_the_checkpoints_pretraining_rate(tiny_checkpoint, tiny_atlas, tmp_path):
    import shutil

    checkpoint = tmp_path / "final"
    shutil.copytree(tiny_checkpoint, checkpoint)
    (checkpoint / "config.yaml").write_text("train:\n  lr: 2.5e-4\n")
    pretrained = Pretrained.load(checkpoint)
    assert encoder_lr(pretrained, FinetuneConfig()) == pytest.approx(2.5e-5)  # a tenth of it
    assert encoder_lr(pretrained, FinetuneConfig(lr=3e-3)) == 3e-3  # the user's rate wins
    # no run config: a tenth of pretraining's default
    assert encoder_lr(pretrained.same_start(), FinetuneConfig()) == pytest.approx(TrainConfig().lr / 10)
    config = FinetuneConfig(label_key="cell_type", max_steps=1)
    result = finetune(pretrained, tiny_atlas[:100].copy(), tmp_path / "ft", config, progress=False)
    assert result.config.lr == pytest.approx(2.5e-5) and config.lr is None  # the caller's config is unchanged
    assert json.loads((result.directory / "finetune.json").read_text())["config"]["lr"] == result.config.lr


def test_the_kept_epoch_is_the_best_on_validation(tiny_checkpoint, tiny_atlas, tmp_path):
    pretrained = Pretrained.load(tiny_checkpoint)
    adata = tiny_atlas[:200].copy()
    config = FinetuneConfig(label_key="cell_type", epochs=4, lr=1e-2)  # a rate high enough to wander
    result = finetune(pretrained, adata, tmp_path / "best", config, progress=False)
    scores = [r["val_macro_f1"] for r in result.history]
    assert len(scores) == 4 and result.epoch == max(i + 1 for i, f in enumerate(scores) if f == max(scores))
    assert result.macro_f1 == pytest.approx(max(scores))  # the saved classifier is that epoch's
    last = finetune(pretrained, adata, tmp_path / "last", dataclasses.replace(config, select_epoch=False),
                    progress=False)
    assert last.epoch == 4 and "val_macro_f1" not in last.history[0]
    assert [r["train_loss"] for r in last.history] == [r["train_loss"] for r in result.history]


def test_group_split_and_gradient_reversal(tiny_atlas):
    val = group_split(tiny_atlas.obs, "dataset", "cell_type", 0.3, seed=1)
    held = set(tiny_atlas.obs.loc[val, "dataset"])
    assert len(held) == 1 and set(tiny_atlas.obs.loc[~val, "dataset"]).isdisjoint(held)
    random_val = group_split(tiny_atlas.obs, None, "cell_type", 0.25, seed=1)
    assert random_val.sum() == pytest.approx(0.25 * tiny_atlas.n_obs, abs=4)
    np.testing.assert_array_equal(random_val, group_split(tiny_atlas.obs, None, "cell_type", 0.25, seed=1))
    x = torch.ones(3, requires_grad=True)
    reverse_gradient(x, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))


def test_cli_finetune_writes_predictions_and_tracks(tiny_checkpoint, tiny_atlas, tmp_path, capsys):
    path = tmp_path / "in.h5ad"
    tiny_atlas[:240].copy().write_h5ad(path)
    out = tmp_path / "ft"
    assert main(["finetune", str(tiny_checkpoint), str(path), "--label-key", "cell_type", "-o", str(out),
                 "--epochs", "1", "--mode", "linear"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "MLflow:" in printed and "LogReg (HVG) on the same split: accuracy" in printed
    assert "contexts read on 300 genes: the training cells' 1,000 most variable" in printed  # all 300 are fewer
    predictions = anndata.read_h5ad(out / "predictions.h5ad")
    assert PREDICTION_KEY in predictions.obs and predictions.n_obs == 240
    info = json.loads((out / "tracking.json").read_text())
    from mlflow import MlflowClient

    metrics = MlflowClient(info["tracking_uri"]).get_run(info["run_id"]).data.metrics
    assert {"val_accuracy", "val_macro_f1", "train_loss"} <= set(metrics)


def test_bad_finetune_input(tiny_checkpoint, tiny_atlas, tmp_path, capsys):
    pretrained = Pretrained.load(tiny_checkpoint)
    adata = tiny_atlas[:50].copy()
    with pytest.raises(InputDataError, match="no column 'celltype'"):
        finetune(pretrained, adata, tmp_path / "a", FinetuneConfig(label_key="celltype"), progress=False)
    with pytest.raises(InputDataError, match="needs batch labels"):
        finetune(pretrained, adata, tmp_path / "b",
                 FinetuneConfig(label_key="cell_type", adversarial_weight=1.0), progress=False)
    with pytest.raises(InputDataError, match="single value"):
        group_split(adata.obs.assign(one="x"), "one", "cell_type", 0.2, 0)
    one_class = adata.copy()
    one_class.obs["one"] = "x"
    with pytest.raises(InputDataError, match="needs at least two"):  # not "accuracy 1.000" on one class
        finetune(pretrained, one_class, tmp_path / "c", FinetuneConfig(label_key="one"), progress=False)

