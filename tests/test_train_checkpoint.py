"""Checkpoint directories: atomic publication, keep-last-K, and refusal to resume a different run."""

from __future__ import annotations

import json

import pytest

from sc_fm.config import RunConfig, resumable_keys, save_config, to_dict
from sc_fm.errors import ConfigError, OutputError
from sc_fm.rundir import RUN_CONFIG_FILE, TRAINER_STATE_FILE
from sc_fm.train import CheckpointManager, DistEnv
from sc_fm.train.checkpoint import check_resumable


def _write(step: int):
    def write(directory):
        (directory / "payload.txt").write_text(str(step))
    return write


def test_keeps_last_k_and_finds_latest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, env=DistEnv())
    assert manager.latest() is None
    for step in (10, 20, 30):
        path = manager.save(step, _write(step))
        assert path == tmp_path / "checkpoints" / f"step_{step}"
    assert manager.steps() == [20, 30]
    assert (manager.latest() / "payload.txt").read_text() == "30"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_20", "step_30"]


def test_failed_write_leaves_previous_checkpoint_and_no_visible_partial(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3, env=DistEnv())
    manager.save(5, _write(5))

    def crash(directory):
        (directory / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OutputError, match="disk full.*previous checkpoints are intact"):
        manager.save(10, crash)
    assert manager.steps() == [5] and manager.latest().name == "step_5"
    manager.save(10, _write(10))  # the stale partial directory is cleared and replaced
    assert manager.steps() == [5, 10]
    assert not (manager.latest() / "half").exists()
    assert not list((tmp_path / "checkpoints").glob(".*"))


def _checkpoint(tmp_path, cfg: RunConfig, world_size: int = 1):
    ckpt = tmp_path / "step_4"
    ckpt.mkdir()
    save_config(cfg, ckpt / RUN_CONFIG_FILE)
    (ckpt / TRAINER_STATE_FILE).write_text(json.dumps({"step": 4, "world_size": world_size}))
    return ckpt


def test_resume_allows_schedule_extension_but_not_a_different_model(tmp_path):
    cfg = RunConfig()
    ckpt = _checkpoint(tmp_path, cfg)
    longer = RunConfig()
    longer.train.max_steps = cfg.train.max_steps * 2
    longer.tracking.uri = "http://elsewhere"
    check_resumable(ckpt, to_dict(longer), world_size=1)
    wider = RunConfig()
    wider.model.d_model = 256
    with pytest.raises(ConfigError, match="model.d_model differs"):
        check_resumable(ckpt, to_dict(wider), world_size=1)
    with pytest.raises(ConfigError, match="written by 1 processes, this run has 2"):
        check_resumable(ckpt, to_dict(cfg), world_size=2)


def test_a_run_saved_before_block_order_existed_resumes_with_the_random_order(tmp_path):
    import yaml

    ckpt = _checkpoint(tmp_path, RunConfig())
    saved = yaml.safe_load((ckpt / RUN_CONFIG_FILE).read_text())
    del saved["data"]["block_order"]  # as an older sc_fm wrote it
    (ckpt / RUN_CONFIG_FILE).write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="data.block_order differs .*saved: 'random'"):
        check_resumable(ckpt, to_dict(RunConfig()), world_size=1)
    old_order = RunConfig()
    old_order.data.block_order = "random"
    check_resumable(ckpt, to_dict(old_order), world_size=1)


def test_every_section_but_the_run_s_own_may_change_on_resume(tmp_path):
    ckpt = _checkpoint(tmp_path, RunConfig())
    changed = RunConfig()
    changed.explain.steps = 99  # the explain section was once left out of a hand-kept list
    changed.explain.marker_ks = [5]
    changed.finetune.epochs = 3
    changed.eval.n_pcs = 7
    changed.data.num_workers = 0
    check_resumable(ckpt, to_dict(changed), world_size=1)
    assert resumable_keys() >= {"explain", "embed", "adapt", "benchmark", "finetune", "eval", "tracking", "prepare"}
    assert not resumable_keys() & {"data", "tokenizer", "model", "train", "train.lr", "data.stores"}
    seeded = RunConfig()
    seeded.train.seed = 1
    with pytest.raises(ConfigError, match="train.seed differs"):
        check_resumable(ckpt, to_dict(seeded), world_size=1)
