"""The same-start control: every checkpoint directory carries the exact untrained weights its
training began from (gene start included), so a benchmark can show what pretraining added."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sc_fm.config import load_config
from sc_fm.pretrained import Pretrained
from sc_fm.train import FINAL_DIR, pretrain

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)


def run(store, run_dir: Path, steps: int) -> Path:
    """The plain engine on tiny.yaml, with the co-expression gene start (the default)."""
    cfg = load_config(ROOT / "configs/runs/tiny.yaml", [
        f"data.stores=[{store.path}]", "data.num_workers=0", "tokenizer.max_len=64", "train.engine=plain",
        "train.global_batch_cells=16", "train.micro_batch_cells=16", "train.warmup_steps=1",
        "model.gene_init_cells=200", f"train.max_steps={steps}", "train.checkpoint_every=2",
        "tracking.enabled=false"])
    assert cfg.model.gene_init == "coexpression"
    return pretrain(cfg, run_dir)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_start_is_saved_in_every_checkpoint_and_is_the_step_zero_model(tiny_store, tiny_atlas, tmp_path):
    untrained = Pretrained.load(run(tiny_store, tmp_path / "zero", steps=0))
    assert_identical(state(untrained.model), state(untrained.start_model()))  # 0 steps: final == start
    trained_run = tmp_path / "trained"
    final = Pretrained.load(run(tiny_store, trained_run, steps=4))
    step_2 = Pretrained.load(trained_run / "checkpoints" / "step_2")
    for checkpoint in (final, step_2):
        assert_identical(state(checkpoint.start_model()), state(untrained.model))
    assert not torch.equal(final.model.embedding.gene.weight, untrained.model.embedding.gene.weight)
    cells = tiny_atlas[:40].copy()
    control = final.same_start().embed(cells, "dataset", key_added=None, progress=False)
    np.testing.assert_array_equal(control, untrained.embed(cells, "dataset", key_added=None, progress=False))
    copied = tmp_path / "copy"
    final.save(copied)  # a copy carries its start
    assert_identical(state(Pretrained.load(copied).start_model()), state(untrained.model))


def test_a_checkpoint_without_a_saved_start_says_how_to_get_one(tiny_checkpoint, tmp_path):
    from sc_fm.errors import InputDataError

    loaded = Pretrained.load(tiny_checkpoint)
    Pretrained(loaded.model, loaded.tokenizer).save(tmp_path / "old")  # as written before starts were kept
    old = Pretrained.load(tmp_path / "old")
    assert not old.has_start
    with pytest.raises(InputDataError, match="no saved start"):
        old.same_start()


def test_a_resume_from_a_checkpoint_without_a_start_saves_none(tiny_store, tmp_path):
    """A checkpoint written before starts were saved: its run's start is unknown, and the resumed
    run's fresh initial weights are not it, so its later checkpoints carry no start."""
    run_dir = tmp_path / "old"
    run(tiny_store, run_dir, steps=2)
    (run_dir / "checkpoints" / "step_2" / "start.safetensors").unlink()
    cfg = load_config(run_dir / "config.yaml", ["train.max_steps=4"])
    final = Pretrained.load(pretrain(cfg, run_dir, resume=True))
    assert not final.has_start and not (run_dir / "checkpoints" / "step_4" / "start.safetensors").exists()
    with pytest.raises(Exception, match="no saved start"):
        final.same_start()
