"""A crafted checkpoint never runs code: no pickle is read on --resume (either engine), embed or finetune."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sc_fm.cli import main
from sc_fm.config import load_config
from sc_fm.errors import InputDataError
from sc_fm.train import pretrain
from sc_fm.train.checkpoint import ALLOW_PICKLED_ENV

ROOT = Path(__file__).resolve().parent.parent


class Payload:
    """Unpickling this runs ``touch MARKER``: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _run(store, run_dir: Path, *overrides: str):
    cfg = load_config(ROOT / "configs/runs/tiny.yaml", [
        f"data.stores=[{store.path}]", "data.num_workers=0", "tokenizer.max_len=32", "train.global_batch_cells=16",
        "train.micro_batch_cells=16", "train.warmup_steps=1", "tracking.enabled=false", "train.checkpoint_every=2",
        *overrides])
    return cfg, pretrain(cfg, run_dir)


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MLFLOW_TRACKING_URI", ALLOW_PICKLED_ENV):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize("engine", ["plain", "deepspeed"])
def test_resume_refuses_crafted_pickles(tiny_store, tmp_path, engine):
    marker = tmp_path / "ran"
    cfg, _ = _run(tiny_store, tmp_path / "run", "train.max_steps=2", f"train.engine={engine}")
    step = tmp_path / "run" / "checkpoints" / "step_2"
    (step / "rank_0.json").unlink()
    torch.save({"step": 2, "rng": Payload(marker), "loader": {}}, step / "rank_0.pt")  # an old-style file
    cfg.train.max_steps = 4
    with pytest.raises(InputDataError, match="pickle"):
        pretrain(cfg, tmp_path / "run", resume=True)
    assert not marker.exists()
    if engine == "deepspeed":
        (step / "rank_0.pt").unlink()
        _run(tiny_store, tmp_path / "fresh", "train.max_steps=2", "train.engine=deepspeed")
        step = tmp_path / "fresh" / "checkpoints" / "step_2"
        optim = next((step / "deepspeed").glob("*optim_states.pt"))
        torch.save({"optimizer_state_dict": Payload(marker)}, optim)
        with pytest.raises(InputDataError, match="refused rather than run"):
            pretrain(cfg, tmp_path / "fresh", resume=True)
        assert not marker.exists()


def test_embed_and_finetune_read_no_pickle(tiny_checkpoint, tiny_atlas, tmp_path, capsys):
    import shutil

    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted"
    shutil.copytree(tiny_checkpoint, crafted)
    torch.save(Payload(marker), crafted / "model.safetensors")
    cells = tmp_path / "cells.h5ad"
    tiny_atlas[:40].copy().write_h5ad(cells)
    assert main(["embed", str(crafted), str(cells), "-o", str(tmp_path / "o.h5ad")]) == 2
    assert "damaged" in capsys.readouterr().err
    assert main(["finetune", str(crafted), str(cells), "--label-key", "cell_type", "-o", str(tmp_path / "ft"),
                 "--no-tracking"]) == 2
    assert not marker.exists()


def test_old_pickled_rank_state_resumes_only_on_opt_in(tiny_store, tmp_path, monkeypatch):
    import json

    import numpy as np

    cfg, _ = _run(tiny_store, tmp_path / "run", "train.max_steps=2", "train.engine=plain")
    step = tmp_path / "run" / "checkpoints" / "step_2"
    state = json.loads((step / "rank_0.json").read_text())
    version, internal, gauss = state["rng"]["python"]
    kind, keys, pos, has_gauss, cached = state["rng"]["numpy"]
    old_rng = {"python": (version, tuple(internal), gauss),
               "numpy": (kind, np.asarray(keys, np.uint32), pos, has_gauss, cached),
               "torch": torch.tensor(state["rng"]["torch"], dtype=torch.uint8)}
    torch.save({**state, "rng": old_rng}, step / "rank_0.pt")  # what sc_fm wrote before JSON states
    (step / "rank_0.json").unlink()
    cfg.train.max_steps = 3
    with pytest.raises(InputDataError, match=ALLOW_PICKLED_ENV):
        pretrain(cfg, tmp_path / "run", resume=True)
    monkeypatch.setenv(ALLOW_PICKLED_ENV, "1")
    pretrain(cfg, tmp_path / "run", resume=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "tokenizer" / "tokenizer.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "tokenizer" / "normalisers.npz").unlink(), "normalisers.npz is missing or damaged"),
    (lambda d: (d / "tokenizer" / "normalisers.npz").write_bytes(b"PK\x03\x04 truncated"),
     "normalisers.npz is missing or damaged"),
    (lambda d: (d / "model_config.json").unlink(), "model_config.json is missing"),
])
def test_damaged_checkpoint_files_give_one_paragraph(tiny_checkpoint, tiny_atlas, tmp_path, capsys, damage, message):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    damage(broken)
    cells = tmp_path / "cells.h5ad"
    tiny_atlas[:40].copy().write_h5ad(cells)
    assert main(["embed", str(broken), str(cells), "-o", str(tmp_path / "o.h5ad")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
