"""The benchmark harness tells good embeddings from bad ones, reproduces the published
sc_mixology anchor, writes its report and logs it under the checkpoint's MLflow run."""

from __future__ import annotations

import json
import math
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from sc_fm.config import EvalConfig, TrackingConfig
from sc_fm.datasets import load_sc_mixology
from sc_fm.errors import InputDataError
from sc_fm.evaluate import compute_baselines, run_benchmark, scib_scores
from sc_fm.evaluate.metrics import BATCH, BIO, KNN_ACCURACY, TOTAL
from sc_fm.evaluate.report import PER_SEED_CSV, markdown_table, verdict
from sc_fm.evaluate.scoring import HARMONY, PCA, RANDOM, SCVI, check_evaluation_set
from sc_fm.evaluate.seeds import SD_SUFFIX, SEEDS
from sc_fm.simulate import AtlasSpec, simulate_atlas

# same 300 gene IDs as the tiny checkpoint's vocabulary; assay capture effects twice the default
STRONG_BATCH_SPEC = AtlasSpec(n_cells=500, n_genes=300, n_studies=3, n_cell_types=4, seed=11, capture_sd=1.0,
                              empty_fraction=0.0, low_quality_fraction=0.0)


@pytest.fixture(scope="module")
def strong_batch_atlas():
    return simulate_atlas(STRONG_BATCH_SPEC)


@pytest.fixture(scope="module")
def tracked_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint inside a run directory with an MLflow run recorded in tracking.json."""
    from sc_fm.tracking import RunTracker

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    shutil.copytree(tiny_checkpoint, run_dir / "final")
    # its database inside the run directory: the kind of tracking.json a benchmark may follow (sc_fm.tracking)
    config = TrackingConfig(experiment="test", uri=f"sqlite:///{run_dir}/mlflow.db")
    tracker = RunTracker.start(config, run_dir, {}, {}, resume=False)
    tracker.finish("FINISHED")
    return run_dir / "final"


@pytest.fixture(scope="module")
def strong_batch_benchmark(strong_batch_atlas, tracked_checkpoint, tmp_path_factory):
    adata = strong_batch_atlas
    batch_signal = pd.get_dummies(adata.obs["dataset"]).to_numpy(np.float32)
    batch_signal += np.random.default_rng(0).normal(0, 0.05, batch_signal.shape).astype(np.float32)
    calls = []

    def seeded_model(seed: int) -> np.ndarray:  # a stand-in for a seeded sc_fm row (e.g. adapted)
        calls.append(seed)
        noise = np.random.default_rng(seed).normal(0, 0.5, adata.obsm["X_latent"].shape)
        return (adata.obsm["X_latent"] + noise).astype(np.float32)

    out = tmp_path_factory.mktemp("bench") / "report"
    started = time.time()
    # two seeds: every seeded method twice; 80 scVI epochs so that both runs cost about one default run
    result = run_benchmark(adata, "dataset", "cell_type", out, [tracked_checkpoint],
                           EvalConfig(n_hvg=200, scvi_epochs=80, scvi_kl_warmup_epochs=20, seed=3),
                           extra_embeddings={"Oracle latent": adata.obsm["X_latent"],
                                             "Batch signal": batch_signal},
                           seeded_candidates={"sc_fm-seeded": seeded_model}, n_seeds=2, progress=False)
    assert calls == [3, 4]
    return result, out, time.time() - started


@pytest.mark.slow
def test_metrics_rank_oracle_above_batch_signal_and_scvi_above_pca(strong_batch_benchmark):
    table = strong_batch_benchmark[0].table
    assert table.loc["Oracle latent", TOTAL] > table.loc["Batch signal", TOTAL] + 0.2
    assert table.loc["Oracle latent", BIO] > table.loc["Batch signal", BIO]
    # scVI mixes the two studies better than PCA: 0.267 against 0.186 with the packages of
    # 2026-12-02 (the same figures from the previous sc_fm release), more than 0.1 before
    assert table.loc[SCVI, BATCH] > table.loc[PCA, BATCH] + 0.05
    assert table.loc["Oracle latent", KNN_ACCURACY] > 0.9
    assert table.loc[RANDOM, BIO] < table.loc[PCA, BIO]  # the control conserves no biology
    assert table.loc[RANDOM, KNN_ACCURACY] < 0.6


@pytest.mark.slow
def test_report_files_verdict_and_mlflow_run(strong_batch_benchmark, tracked_checkpoint):
    from mlflow import MlflowClient

    result, out, _ = strong_batch_benchmark
    expected_rows = ["sc_fm-tiny", "Oracle latent", "Batch signal", "sc_fm-seeded", PCA, SCVI, HARMONY,
                     RANDOM]
    csv = pd.read_csv(out / "results.csv", index_col=0)
    assert list(csv.index) == expected_rows
    assert {BIO, BATCH, TOTAL, "KBET", "iLISI", "cLISI", KNN_ACCURACY} <= set(csv.columns)
    np.testing.assert_allclose(csv[TOTAL], 0.6 * csv[BIO] + 0.4 * csv[BATCH], atol=1e-9)
    report = (out / "report.md").read_text()
    assert result.verdict[0].startswith("sc_fm-tiny vs scVI: total ") and result.verdict[0] in report
    assert "scib_metrics: 0.5.10" in report and "![UMAP" in report
    assert "- sc_fm-tiny: mean pooling into the 128-d pooled state (cell objective nb)" in report
    assert (out / "umap.png").stat().st_size > 10_000 and (out / "results.md").is_file()
    info = json.loads((tracked_checkpoint.parent / "tracking.json").read_text())
    assert result.tracking["run_id"] == info["run_id"]
    run = MlflowClient(info["tracking_uri"]).get_run(info["run_id"])
    assert run.data.metrics["benchmark/scVI/Total"] == pytest.approx(result.table.loc[SCVI, TOTAL])


@pytest.mark.slow
def test_two_seeds_give_one_row_per_method_with_sds_and_every_seed(strong_batch_benchmark):
    result, out, _ = strong_batch_benchmark
    seeded = ["sc_fm-seeded", SCVI, HARMONY, RANDOM]
    csv = pd.read_csv(out / "results.csv", index_col=0)
    for column in (BIO, BATCH, TOTAL):
        assert list(csv.columns).index(column + SD_SUFFIX) == list(csv.columns).index(column) + 1
    assert (csv.loc[["sc_fm-tiny", "Oracle latent", PCA], TOTAL + SD_SUFFIX] == 0).all()  # no seed
    assert (csv.loc[[SCVI, RANDOM, "sc_fm-seeded"], TOTAL + SD_SUFFIX] > 0).all()
    assert csv[SEEDS].to_dict() == {m: 2 if m in seeded else 1 for m in csv.index}
    per_seed = pd.read_csv(out / PER_SEED_CSV)
    assert per_seed.groupby("method").size().to_dict() == {m: 2 if m in seeded else 1 for m in csv.index}
    assert sorted(per_seed.loc[per_seed["method"] == SCVI, "seed"]) == [3, 4]
    assert per_seed.loc[per_seed["method"] == PCA, "seed"].isna().all()
    np.testing.assert_allclose(csv[TOTAL], per_seed.groupby("method")[TOTAL].mean()[csv.index], atol=1e-9)
    np.testing.assert_allclose(csv.loc[SCVI, TOTAL + SD_SUFFIX],
                               per_seed.loc[per_seed["method"] == SCVI, TOTAL].std(ddof=1), atol=1e-9)
    report = (out / "report.md").read_text()
    assert "seeds 3, 4" in report and "Every seed" in report


@pytest.mark.slow
def test_harmony_row_is_finite_and_verdicts_cover_scvi_harmony_and_the_control(strong_batch_benchmark):
    result = strong_batch_benchmark[0]
    harmony = result.table.loc[HARMONY]
    assert np.isfinite(harmony[[BIO, BATCH, TOTAL]].to_numpy(float)).all()
    assert harmony[BATCH] > result.table.loc[PCA, BATCH]  # it integrates
    candidates = ["sc_fm-tiny", "Oracle latent", "Batch signal", "sc_fm-seeded"]
    assert [line.split(":")[0] for line in result.verdict] == [f"{c} vs {r}" for c in candidates
                                                               for r in (SCVI, HARMONY, RANDOM)]
    assert all(line.split("; ")[1].split(" ")[0] in {"beats", "matches", "trails"} for line in result.verdict)
    assert "Oracle latent vs Random control: " in result.verdict[5] and "; beats (" in result.verdict[5]


def test_without_batch_column_batch_metrics_are_not_applicable(strong_batch_atlas):
    adata = strong_batch_atlas
    table = scib_scores({"Oracle": adata.obsm["X_latent"]}, adata.obs, None, "cell_type",
                        adata.obsm["X_latent"])
    assert math.isnan(table.loc["Oracle", BATCH])
    assert table.loc["Oracle", TOTAL] == table.loc["Oracle", BIO] > 0.5
    assert "n/a" in markdown_table(table)
    twins = pd.concat([table, table]).set_axis([SCVI, "x"])
    total = table.loc["Oracle", TOTAL]
    expected = (f"x vs scVI: total {total:.2f} vs {total:.2f}, bio +0.00, batch n/a; "
                "matches (no seed dependence, spread 0)")
    assert verdict(twins, SCVI, ["x"]) == [expected]


def test_bad_evaluation_sets_are_refused(strong_batch_atlas):
    adata = strong_batch_atlas[:120].copy()
    with pytest.raises(InputDataError, match="no column 'donor_id'"):
        check_evaluation_set(adata, "donor_id", "cell_type", "eval.h5ad")
    with pytest.raises(InputDataError, match="no column 'celltype'"):
        check_evaluation_set(adata, "dataset", "celltype", "eval.h5ad")
    adata.X = adata.X.astype(np.float32) * 0.5
    with pytest.raises(InputDataError, match="not integers"):
        check_evaluation_set(adata, "dataset", "cell_type", "eval.h5ad")


@pytest.mark.slow
def test_sc_mixology_anchor_pca_and_scvi_totals():
    """Published scib-metrics 0.5.10 anchor on the real set: PCA ~0.670, scVI ~0.868 (+-0.03)."""
    adata = load_sc_mixology()
    assert adata.n_obs == 450 and set(adata.obs["batch"]) == {"celseq2", "dropseq"}
    config = EvalConfig()
    baselines = compute_baselines(adata, "batch", config)
    table = scib_scores({k: v for k, v in baselines.embeddings.items() if k != RANDOM}, adata.obs, "batch",
                        "cell_type", baselines.pre_integrated)
    assert table.loc[PCA, TOTAL] == pytest.approx(0.670, abs=0.03)
    assert table.loc[SCVI, TOTAL] == pytest.approx(0.868, abs=0.03)


@pytest.mark.slow
def test_pretrain_evaluator_scores_baselines_once_and_the_model_on_each_call(strong_batch_atlas, tiny_checkpoint,
                                                                           tmp_path):
    from sc_fm.evaluate import PretrainEvaluator
    from sc_fm.pretrained import Pretrained

    path = tmp_path / "eval.h5ad"
    strong_batch_atlas[:300].copy().write_h5ad(path)
    config = EvalConfig(h5ad=str(path), batch_key="dataset", label_key="cell_type", n_hvg=200, scvi_epochs=20,
                        scvi_kl_warmup_epochs=10)
    pretrained = Pretrained.load(tiny_checkpoint)
    evaluator = PretrainEvaluator(config, pretrained.tokenizer)
    baseline = evaluator.baseline_metrics
    assert {f"{m}/{k}" for m in ("pca", "scvi") for k in ("bio", "batch", "total", "knn_accuracy")} <= set(baseline)
    scores = evaluator(pretrained.model)
    assert set(scores) == {"bio", "batch", "total", "knn_accuracy", "logreg_accuracy"}
    assert scores["total"] == pytest.approx(0.6 * scores["bio"] + 0.4 * scores["batch"])
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert evaluator(pretrained.model) == scores  # same weights, same scores


def test_cli_benchmark_refuses_missing_columns_before_any_training(strong_batch_atlas, tmp_path, capsys):
    from sc_fm.cli import main

    path = tmp_path / "cells.h5ad"
    strong_batch_atlas[:40].copy().write_h5ad(path)
    assert main(["benchmark", str(path), "--batch-key", "protocol", "--label-key", "cell_type",
                 "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no column 'protocol' in .obs" in err and "--batch-key" in err
    assert not (tmp_path / "r").exists()


def test_labels_in_one_batch_only_are_named_in_the_report_note():
    from sc_fm.evaluate.scoring import single_batch_labels

    obs = pd.DataFrame({"batch": ["v1", "v1", "v2", "v2", "v2"], "cell_type": ["B", "NK", "B", "T", "T"]})
    note = single_batch_labels(obs, "batch", "cell_type")
    assert note.startswith("labels in one batch only: NK (only in v1), T (only in v2).")
    assert single_batch_labels(obs[obs["cell_type"] == "B"], "batch", "cell_type") is None
    assert single_batch_labels(obs, None, "cell_type") is None
