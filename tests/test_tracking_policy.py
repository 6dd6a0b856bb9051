"""One tracking policy: every command logs to MLflow where ``tracking.uri`` says, and nowhere when
``tracking.enabled`` is false (``sc_fm.tracking.log_report`` for the reports)."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from sc_fm.cli import main
from sc_fm.config import TrackingConfig, load_config
from sc_fm.tracking import TRACKING_FILE, log_report


def test_log_report_names_the_run_by_kind_and_logs_history_metrics_and_files(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    (report / "results.csv").write_text("a,b\n1,2\n")
    uri = f"sqlite:///{tmp_path / 'user.db'}"
    tracking = TrackingConfig(uri=uri, experiment="lab")
    info = log_report(tracking, "annotation", report, {"accuracy": 0.75}, files=report,
                      params={"seed": "3"}, history=[(1, {"loss": 2.0}), (2, {"loss": 1.0})])
    client = MlflowClient(uri)
    run = client.get_run(info["run_id"])
    assert info["tracking_uri"] == uri and json.loads((report / TRACKING_FILE).read_text()) == info
    assert client.get_experiment(run.info.experiment_id).name == "lab-annotation"
    assert run.info.run_name == "report" and run.data.tags["sc_fm.kind"] == "annotation"
    assert run.data.params == {"seed": "3"} and run.data.metrics == {"accuracy": 0.75, "loss": 1.0}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(1, 2.0), (2, 1.0)]
    assert client.get_metric_history(run.info.run_id, "accuracy")[0].step == 2
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "annotation")) == [
        "annotation/results.csv", "annotation/tracking.json"]
    assert log_report(TrackingConfig(enabled=False, uri=uri), "annotation", tmp_path / "off", {"x": 1.0}) is None
    assert not (tmp_path / "off").exists()


def test_the_old_per_command_switches_move_to_tracking_enabled():
    assert load_config(overrides=["explain.tracking=false"]).tracking.enabled is False
    assert load_config(overrides=["finetune.tracking=false", "tracking.enabled=true"]).tracking.enabled is True


@pytest.fixture(scope="module")
def cells(tiny_atlas, tmp_path_factory):
    path = tmp_path_factory.mktemp("cells") / "cells.h5ad"
    tiny_atlas[::3].copy().write_h5ad(path)  # 200 cells of every study
    return path


def _command(name: str, checkpoint, cells, store, out) -> list[str]:
    if name == "pretrain":
        return ["pretrain", "--config", "tiny", "-o", str(out), f"data.stores=[{store.path}]", "train.max_steps=1",
                "train.engine=plain", "data.num_workers=0", "tokenizer.max_len=64", "model.gene_init=normal",
                "train.global_batch_cells=16", "train.micro_batch_cells=16", "train.checkpoint_every=1"]
    if name == "benchmark":
        return ["benchmark", str(cells), "--label-key", "cell_type", "--batch-key", "dataset", "-o", str(out),
                "--scvi-epochs", "1", "eval.n_hvg=100"]
    if name == "explain":
        return ["explain", str(checkpoint), str(cells), "--groupby", "cell_type", "-o", str(out), "--no-progress",
                "explain.max_cells_per_group=6", "explain.steps=2", "explain.random_draws=5", "explain.perturb_top=0"]
    return ["finetune", str(checkpoint), str(cells), "--label-key", "cell_type", "-o", str(out), "--epochs", "1",
            "--mode", "linear"]


@pytest.mark.parametrize("name", ["pretrain", "explain", "finetune",
                                  pytest.param("benchmark", marks=pytest.mark.slow)])
def test_every_command_honours_tracking_uri_and_enabled(name, tiny_checkpoint, tiny_store, cells, tmp_path,
                                                        monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'environment.db'}")
    uri = f"sqlite:///{tmp_path / 'chosen.db'}"
    assert main([*_command(name, tiny_checkpoint, cells, tiny_store, tmp_path / "on"), f"tracking.uri={uri}"]) == 0
    info = json.loads((tmp_path / "on" / TRACKING_FILE).read_text())
    assert info["tracking_uri"] == uri and MlflowClient(uri).get_run(info["run_id"]).data.metrics
    capsys.readouterr()
    assert main([*_command(name, tiny_checkpoint, cells, tiny_store, tmp_path / "off"),
                 f"tracking.uri=sqlite:///{tmp_path / 'unused.db'}", "tracking.enabled=false"]) == 0
    assert not (tmp_path / "off" / TRACKING_FILE).exists()
    assert not (tmp_path / "unused.db").exists() and not (tmp_path / "environment.db").exists()
    assert "MLflow" not in capsys.readouterr().out
