"""MLflow tracking: SQLite default, a real ``mlflow server`` on loopback, resume into the same run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sc_fm.config import TrackingConfig
from sc_fm.errors import ConfigError
from sc_fm.tracking import TRACKING_FILE, RunTracker, flatten, resolve_tracking_uri

SERVER_START_TIMEOUT_S = 90


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (free port) with its own SQLite store; stopped after."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "art")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log_tail = (root / "server.log").read_text()[-2000:]
                raise RuntimeError(f"mlflow server did not start: {log_tail}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_uri_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "runs" / "a"
    assert resolve_tracking_uri(TrackingConfig(), run_dir) == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(TrackingConfig(), run_dir) == "http://env:5000"
    assert resolve_tracking_uri(TrackingConfig(uri="http://cfg:1"), run_dir) == "http://cfg:1"


def test_flatten_config():
    assert flatten({"train": {"lr": 0.001, "stores": ["a", "b"]}, "x": {}}) == {
        "train.lr": "0.001", "train.stores": '["a", "b"]', "x": "{}"}


def _exercise(config: TrackingConfig, run_dir: Path) -> tuple[MlflowClient, str]:
    """Start, log, finish, resume, log more, finish; return the client and the run id."""
    tracker = RunTracker.start(config, run_dir, {"train.lr": "0.001"}, {"sys.hostname": "h"}, resume=False)
    for step in (1, 2, 3):
        tracker.log_metrics({"loss": 1.0 / step, "lr": 0.1}, step)
    (run_dir / "final").mkdir()
    (run_dir / "final" / "model_config.json").write_text("{}")
    tracker.log_artifacts(run_dir / "final", "final")
    tracker.finish("KILLED")
    resumed = RunTracker.start(config, run_dir, {"train.lr": "0.001"}, {}, resume=True)
    assert resumed.run_id == tracker.run_id
    resumed.log_metrics({"loss": 0.2}, 4)
    resumed.finish("FINISHED")
    return MlflowClient(tracking_uri=tracker.uri), tracker.run_id


def _check(client: MlflowClient, run_id: str, run_dir: Path) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.001" and run.data.tags["sys.hostname"] == "h"
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.2)]
    assert [a.path for a in client.list_artifacts(run_id, "final")] == ["final/model_config.json"]
    recorded = json.loads((run_dir / TRACKING_FILE).read_text())
    assert recorded["run_id"] == run_id and recorded["experiment_id"] == run.info.experiment_id


def test_sqlite_default_beside_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    client, run_id = _exercise(TrackingConfig(experiment="unit"), run_dir)
    _check(client, run_id, run_dir)
    assert (tmp_path / "runs" / "mlflow.db").is_file()
    assert (tmp_path / "runs" / "mlartifacts").is_dir()  # artifacts beside the database, not in the cwd


def test_real_server_on_loopback(mlflow_server, tmp_path):
    run_dir = tmp_path / "r2"
    run_dir.mkdir()
    client, run_id = _exercise(TrackingConfig(uri=mlflow_server, experiment="server"), run_dir)
    _check(client, run_id, run_dir)
    assert json.loads((run_dir / TRACKING_FILE).read_text())["tracking_uri"] == mlflow_server


def test_unreachable_server_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(ConfigError, match="tracking.enabled=false"):
        RunTracker.start(TrackingConfig(uri=f"http://127.0.0.1:{_free_port()}"), tmp_path, {}, {},
                         resume=False)
