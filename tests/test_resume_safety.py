"""--resume picks a usable checkpoint and the data the run started with, or says why not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipelines import SourceSpec, prepare
from sc_fm.config import PrepareConfig, QCConfig, load_config
from sc_fm.errors import ConfigError, InputDataError
from sc_fm.train import METRICS_FILE, pretrain

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("dataset", "assay", "donor", "cell_type")


def config(store_path, *overrides: str):
    return load_config(ROOT / "configs/runs/tiny.yaml", [
        f"data.stores=[{store_path}]", "data.num_workers=0", "tokenizer.max_len=32", "train.global_batch_cells=16",
        "train.micro_batch_cells=16", "train.warmup_steps=1", "tracking.enabled=false", "train.engine=plain",
        "train.checkpoint_every=2", "train.keep_last=3", *overrides])


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / METRICS_FILE).read_text().splitlines()]


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tiny_store, tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(config(tiny_store.path, "train.max_steps=4"), run)
    weights = run / "checkpoints" / "step_4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as by a full disk
    pretrain(config(tiny_store.path, "train.max_steps=5"), run, resume=True)
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "step_4" in err and "resuming at step 2" in err
    assert _steps(run) == [1, 2, 3, 4, 5]
    for step in ("step_2", "step_4"):
        (run / "checkpoints" / step / "trainer_state.json").write_text("{not json")
    (run / "checkpoints" / "step_5" / "rank_0.json").unlink()
    with pytest.raises(InputDataError, match="no checkpoint in the run directory is complete"):
        pretrain(config(tiny_store.path, "train.max_steps=6"), run, resume=True)


def test_resume_refuses_a_store_appended_to_since_the_start(tiny_atlas, tmp_path):
    store = tmp_path / "grows.zarr"
    prepare_config = PrepareConfig(vocab="corpus", shard_cells=200, chunk_cells=64,
                                   qc=QCConfig(min_genes=0, min_counts=0, max_mito_fraction=None))
    part = SourceSpec(adata=tiny_atlas[:300].copy(), dataset="a", obs_columns={c: c for c in COLUMNS})
    prepare([part], store, prepare_config, progress=False)
    run = tmp_path / "run"
    pretrain(config(store, "train.max_steps=2"), run)
    more = SourceSpec(adata=tiny_atlas[300:].copy(), dataset="b", obs_columns={c: c for c in COLUMNS})
    prepare([more], store, prepare_config, append=True, progress=False)
    with pytest.raises(ConfigError, match="train.allow_data_change=true") as caught:
        pretrain(config(store, "train.max_steps=3"), run, resume=True)
    assert "300 cells in 2 shards then, 600 in" in str(caught.value)
    pretrain(config(store, "train.max_steps=3", "train.allow_data_change=true"), run, resume=True)
    assert _steps(run) == [1, 2, 3]


def test_sigterm_stops_pretraining_like_ctrl_c_with_exit_143(tiny_store, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MLFLOW_TRACKING_URI", "MASTER_ADDR", "MASTER_PORT")}
    process = subprocess.Popen(
        [sys.executable, "-m", "sc_fm", "pretrain", "--config", "tiny", "-o", str(run), f"data.stores=[{tiny_store.path}]",
         "data.num_workers=0", "tokenizer.max_len=32", "train.global_batch_cells=16", "train.micro_batch_cells=16",
         "train.engine=plain", "train.max_steps=100000", "train.checkpoint_every=100000"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((run / METRICS_FILE).is_file() and (run / METRICS_FILE).read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    info = json.loads((run / "tracking.json").read_text())
    assert MlflowClient(info["tracking_uri"]).get_run(info["run_id"]).info.status == "KILLED"


def test_a_resume_keeps_the_thread_count_its_run_recorded(tiny_store, tmp_path, monkeypatch, capsys):
    """The count is decided from the load at a run's start; a resume reuses the recorded one, so
    that a busier (or idler) machine at resume time does not change the arithmetic."""
    import torch

    run = tmp_path / "run"
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    pretrain(config(tiny_store.path, "train.max_steps=2"), run)
    state = run / "checkpoints" / "step_2" / "rank_0.json"
    recorded = json.loads(state.read_text())["threads"]
    assert 1 <= recorded <= len(__import__("os").sched_getaffinity(0))
    forced = {**json.loads(state.read_text()), "threads": 7}  # as if the first run had had 7 threads
    state.write_text(json.dumps(forced))
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n, original=torch.set_num_threads: (seen.append(n),
                                                                                           original(n)))
    pretrain(config(tiny_store.path, "train.max_steps=4"), run, resume=True)
    assert seen[0] == 7 and "the resumed checkpoint recorded" in capsys.readouterr().err
    assert json.loads((run / "checkpoints" / "step_4" / "rank_0.json").read_text())["threads"] == 7
