"""Behaviour pinned across refactors: the plain engine's first losses on the tiny store, exactly.

The values were recorded from the code before the package was reorganised (``Pretrained``,
engine-only ``train/``); the same seed must still give the same losses, step by step. Any
objective added since is switched off here, and the cells come in the original order (the
blocks and block order of then), so a change in these numbers is a change in what the
original objectives compute.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sc_fm.config import load_config
from sc_fm.train import METRICS_FILE, pretrain

ROOT = Path(__file__).resolve().parent.parent

# step: (loss, gene_loss, value_loss), train.seed=3, plain engine, fp32, CPU
REFERENCE = {
    1: (7.475968360900879, 5.721534252166748, 1.7544341087341309),
    2: (6.76502799987793, 5.718601226806641, 1.0464270114898682),
    3: (6.285994529724121, 5.673248767852783, 0.6127457618713379),
    4: (6.033567905426025, 5.649129867553711, 0.384437620639801),
    5: (5.8800578117370605, 5.5781731605529785, 0.3018847405910492),
    6: (5.784488677978516, 5.608778953552246, 0.17570960521697998),
}


def test_plain_engine_reproduces_reference_losses(tiny_store, tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    cfg = load_config(ROOT / "configs/runs/tiny.yaml", [
        f"data.stores=[{tiny_store.path}]", "data.num_workers=0", "tokenizer.max_len=64",
        "train.global_batch_cells=32", "train.micro_batch_cells=16", "train.warmup_steps=2",
        "train.lr=3e-3", "tracking.enabled=false", "train.engine=plain", "train.max_steps=6",
        "train.seed=3", "model.cell_objective=none", "model.encoder_conditions=true", "model.pooling=cls",
        "model.positional=null", "model.gene_init=normal", "tokenizer.downsample_prob=0",
        "data.block_cells=512", "data.blocks_per_fetch=16", "data.block_order=random"])
    pretrain(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    got = {r["step"]: (r["loss"], r["gene_loss"], r["value_loss"]) for r in records}
    assert sorted(got) == sorted(REFERENCE)
    for step, expected in REFERENCE.items():
        assert got[step] == pytest.approx(expected, rel=1e-5, abs=1e-6), f"step {step}"
