"""The pretraining engine end to end on the tiny store: parity, exact resume, failures, multi-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

import sc_fm.train.loop as loop
from s3_server import bucket, s3_env, s3_settings  # noqa: F401 - fixtures of the two-process test
from sc_fm.config import load_config
from sc_fm.model import MaskedGeneTransformer
from sc_fm.pretrained import Pretrained
from sc_fm.errors import ConfigError
from sc_fm.tracking import TRACKING_FILE
from sc_fm.train import FINAL_DIR, METRICS_FILE, TrainingError, pretrain

ROOT = Path(__file__).resolve().parent.parent


def run_config(store, *overrides: str):
    """tiny.yaml shrunk further: 64-token cells, 2 micro-batches of 16 cells per step."""
    return load_config(ROOT / "configs/runs/tiny.yaml", [
        f"data.stores=[{store.path}]", "data.num_workers=0", "tokenizer.max_len=64",
        "train.global_batch_cells=32", "train.micro_batch_cells=16", "train.warmup_steps=2",
        "train.lr=3e-3", "tracking.enabled=false", *overrides])


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / METRICS_FILE).read_text().splitlines()]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    model = Pretrained.load(directory).model
    return model.state_dict()


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.slow
def test_plain_and_zero_stages_agree_on_first_steps(tiny_store, tmp_path):
    runs = {}
    for name in ("plain", "zero1", "zero2", "zero3"):
        engine = ["train.engine=plain"] if name == "plain" else [f"train.deepspeed_config={name}"]
        runs[name] = tmp_path / name
        pretrain(run_config(tiny_store, "train.max_steps=3", *engine), runs[name])
    reference = weights(runs["plain"] / FINAL_DIR)
    for name in ("zero1", "zero2", "zero3"):
        assert losses(runs[name]) == pytest.approx(losses(runs["plain"]), rel=1e-5, abs=1e-6)
        for key, value in weights(runs[name] / FINAL_DIR).items():
            torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-5, msg=f"{name} {key}")
    first, last = losses(runs["plain"])[0], losses(runs["plain"])[-1]
    assert first != last  # the optimizer did move the model


def _interrupt_at(monkeypatch, step: int) -> None:
    """Simulate a kill during ``step``: its update is computed but never recorded or saved."""
    real_check = loop.check_finite

    def check(metrics, at, last):
        real_check(metrics, at, last)
        if at == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "check_finite", check)


@pytest.mark.parametrize("engine", ["train.engine=plain", "train.deepspeed_config=zero2"])
def test_killed_and_resumed_run_equals_uninterrupted(tiny_store, tmp_path, monkeypatch, engine):
    overrides = ("train.max_steps=7", "train.checkpoint_every=3", "train.keep_last=2",
                 "tracking.enabled=true", "model.dropout=0.1", engine)
    whole = tmp_path / "runs" / "whole"
    pretrain(run_config(tiny_store, *overrides), whole)

    broken = tmp_path / "runs" / "broken"
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 5)
        with pytest.raises(KeyboardInterrupt):
            pretrain(run_config(tiny_store, *overrides), broken)
    assert sorted(p.name for p in (broken / "checkpoints").iterdir()) == ["step_3"]
    assert len(losses(broken)) == 4
    run_id = json.loads((broken / TRACKING_FILE).read_text())["run_id"]

    pretrain(run_config(tiny_store, *overrides), broken, resume=True)
    assert losses(broken) == losses(whole)  # exact, step by step
    resumed, reference = weights(broken / FINAL_DIR), weights(whole / FINAL_DIR)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert sorted(p.name for p in (broken / "checkpoints").iterdir()) == ["step_6", "step_7"]

    final_info = json.loads((broken / FINAL_DIR / TRACKING_FILE).read_text())
    assert final_info["run_id"] == run_id  # the resumed run continued the same MLflow run
    client = MlflowClient(final_info["tracking_uri"])
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(run_id, "loss")})
    assert steps == list(range(1, 8))
    assert [a.path for a in client.list_artifacts(run_id)] == [FINAL_DIR]


@pytest.mark.slow
@pytest.mark.parametrize("engine, resumed_workers", [("train.deepspeed_config=zero2", 1), ("train.engine=plain", 2)])
def test_resume_is_exact_at_the_preset_defaults(tiny_store, tmp_path, monkeypatch, engine, resumed_workers):
    """tiny.yaml as shipped (a loader worker, augmentation, stratified order): the resumed run
    starts its workers after restoring the RNG states, which must not shift them; a different
    worker count on resume gives the same run."""
    overrides = ("data.num_workers=1", "train.max_steps=6", "train.checkpoint_every=3", "train.seed=3", engine)
    whole = tmp_path / "whole"
    pretrain(run_config(tiny_store, *overrides), whole)
    broken = tmp_path / "broken"
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 5)
        with pytest.raises(KeyboardInterrupt):
            pretrain(run_config(tiny_store, *overrides), broken)
    pretrain(run_config(tiny_store, *overrides, f"data.num_workers={resumed_workers}"), broken, resume=True)
    assert losses(broken) == losses(whole)
    resumed, reference = weights(broken / FINAL_DIR), weights(whole / FINAL_DIR)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_fresh_run_refuses_a_used_directory(tiny_store, tmp_path):
    run_dir = tmp_path / "run"
    pretrain(run_config(tiny_store, "train.max_steps=1", "train.engine=plain"), run_dir)
    with pytest.raises(Exception, match="--resume"):
        pretrain(run_config(tiny_store, "train.max_steps=1", "train.engine=plain"), run_dir)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_store, tmp_path, monkeypatch):
    real_forward = MaskedGeneTransformer.forward
    calls = {"n": 0}

    def forward(self, batch):
        out = real_forward(self, batch)
        calls["n"] += 1
        if calls["n"] > 8:  # step 5 onwards (2 micro-batches per step)
            out = {**out, "loss": out["loss"] * float("nan")}
        return out

    monkeypatch.setattr(MaskedGeneTransformer, "forward", forward)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError, match="loss became nan at step 5") as err:
        pretrain(run_config(tiny_store, "train.max_steps=8", "train.checkpoint_every=2", "train.engine=plain",
                            "tracking.enabled=true"), run_dir)
    assert "checkpoints/step_4" in err.value.message
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_2", "step_4"]
    model = Pretrained.load(run_dir / "checkpoints" / "step_4").model
    assert all(torch.isfinite(p).all() for p in model.parameters())
    info = json.loads((run_dir / TRACKING_FILE).read_text())
    assert MlflowClient(info["tracking_uri"]).get_run(info["run_id"]).info.status == "FAILED"


def test_a_set_up_failure_closes_the_mlflow_run_it_opened(tiny_store, tmp_path, monkeypatch):
    """The MLflow run opens in a thread beside the co-expression start: when that start
    fails, the run is closed as FAILED, not left RUNNING."""
    import sc_fm.train.loop

    def fail(*args, **kwargs):
        raise ConfigError("no axes", "model.gene_init")

    monkeypatch.setattr(sc_fm.train.loop, "coexpression_loadings", fail)
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="no axes"):
        pretrain(run_config(tiny_store, "train.max_steps=2", "train.engine=plain", "tracking.enabled=true",
                            "model.gene_init=coexpression"), run_dir)
    info = json.loads((run_dir / TRACKING_FILE).read_text())
    assert MlflowClient(info["tracking_uri"]).get_run(info["run_id"]).info.status == "FAILED"


def test_evaluation_hook_logs_and_leaves_training_unchanged(tiny_store, tmp_path):
    seen = []

    class CountingEvaluator:
        """Stands in for the scIB evaluator: draws random numbers, as real evaluation may."""

        def __init__(self, tokenizer):
            self.baseline_metrics = {"pca_overall": 0.5}

        def __call__(self, model):
            seen.append(model.training)
            torch.rand(100)
            return {"overall": float(len(seen))}

    common = ("train.max_steps=4", "train.engine=plain", "model.dropout=0.1")
    plain_run, eval_run = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    pretrain(run_config(tiny_store, *common), plain_run)
    pretrain(run_config(tiny_store, *common, "train.eval_every=2", "tracking.enabled=true"), eval_run,
             evaluator=CountingEvaluator)
    assert seen == [False, False]  # evaluated in eval mode at steps 2 and 4
    assert losses(eval_run) == losses(plain_run)
    info = json.loads((eval_run / TRACKING_FILE).read_text())
    client = MlflowClient(info["tracking_uri"])
    history = client.get_metric_history(info["run_id"], "eval/overall")
    assert [(m.step, m.value) for m in history] == [(2, 1.0), (4, 2.0)]
    assert client.get_run(info["run_id"]).data.metrics["baseline/pca_overall"] == 0.5


@pytest.mark.slow
def test_two_process_deepspeed_zero2_run_from_s3_and_resume(tiny_store, bucket, tmp_path):
    """Two ranks read the store from S3 (the server on 127.0.0.1 of ``s3_server.py``); the run
    resumed from its middle checkpoint repeats the uninterrupted run's losses."""
    import shutil

    from s3_server import upload_store

    url = upload_store(tiny_store.path, f"{bucket}/tiny.zarr")
    run_dir = tmp_path / "runs" / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sc_fm", "pretrain", "--config", str(ROOT / "configs/runs/tiny.yaml"), "-o", str(run_dir),
           f"data.stores=[{url}]", "data.num_workers=0", "tokenizer.max_len=64",
           "train.global_batch_cells=32", "train.micro_batch_cells=16", "train.max_steps=24",
           "train.warmup_steps=2", "train.lr=3e-3", "train.checkpoint_every=12",
           "train.deepspeed_config=configs/deepspeed/zero2.yaml"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    curve = losses(run_dir)
    assert len(curve) == 24
    assert sum(curve[-4:]) / 4 < sum(curve[:4]) / 4 - 0.3  # the loss went down
    state = json.loads((run_dir / "checkpoints" / "step_24" / "trainer_state.json").read_text())
    assert (state["world_size"], state["accumulation"]) == (2, 1)  # 16 cells x 1 x 2 ranks = 32
    for rank in (0, 1):
        assert (run_dir / "checkpoints" / "step_24" / f"rank_{rank}.json").is_file()

    shutil.rmtree(run_dir / "checkpoints" / "step_24")  # as if stopped after step 12's checkpoint
    shutil.rmtree(run_dir / FINAL_DIR)
    result = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    assert losses(run_dir) == pytest.approx(curve, rel=1e-6, abs=1e-7)  # steps 13-24 again, from S3
    info = json.loads((run_dir / FINAL_DIR / TRACKING_FILE).read_text())
    assert info["tracking_uri"] == f"sqlite:///{run_dir.parent / 'mlflow.db'}"
    run = MlflowClient(info["tracking_uri"]).get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["run.world_size"] == "2" and run.data.tags["sys.world_size"] == "2"
    assert {"loss", "gene_loss", "value_loss", "tokens_per_s", "lr", "grad_norm", "mfu"} <= set(run.data.metrics)
    model = Pretrained.load(run_dir / FINAL_DIR).model
    assert all(torch.isfinite(p).all() for p in model.parameters())
