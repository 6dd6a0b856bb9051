"""Training plan: schedule values, batch arithmetic, DeepSpeed config and early rejection of bad configs."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import torch

from sc_fm.config import TrainConfig, load_config
from sc_fm.errors import ConfigError
from sc_fm.train import DistEnv, WarmupCosine, accumulation_steps, build_scheduler, make_plan, pretrain
from sc_fm.train.deepspeed_config import build_deepspeed_config, load_zero_settings

ROOT = Path(__file__).resolve().parent.parent


def test_warmup_cosine_exact_values():
    sched = WarmupCosine(warmup=4, total=14, min_ratio=0.1)
    assert [sched(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert sched(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert sched(14) == pytest.approx(0.1)
    assert sched(100) == pytest.approx(0.1)  # flat after max_steps


def test_scheduler_drives_optimizer_lr_and_round_trips():
    train = TrainConfig(lr=1e-2, warmup_steps=2, max_steps=10, min_lr_ratio=0.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=train.lr)
    sched = build_scheduler(opt, train)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:2] == pytest.approx([5e-3, 1e-2])
    fresh_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=train.lr)
    fresh = build_scheduler(fresh_opt, train)
    fresh.load_state_dict(sched.state_dict())
    fresh_opt.param_groups[0]["lr"] = fresh.get_last_lr()[0]
    assert fresh.last_epoch == 5 and fresh.get_last_lr() == sched.get_last_lr()


@pytest.mark.parametrize("world, accum", [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_accumulation_keeps_global_batch(world, accum):
    train = TrainConfig(global_batch_cells=256, micro_batch_cells=32)
    assert accumulation_steps(train, world) == accum
    assert train.micro_batch_cells * accum * world == train.global_batch_cells


def test_accumulation_rejects_world_size_that_does_not_divide():
    with pytest.raises(ConfigError, match=r"world size in \[1, 2, 4\]"):
        accumulation_steps(TrainConfig(global_batch_cells=128, micro_batch_cells=32), 3)


def test_deepspeed_config_derives_batch_from_train():
    train = TrainConfig(global_batch_cells=128, micro_batch_cells=16, grad_clip=0.5)
    for stage, name in ((1, "zero1"), (2, "zero2"), (3, "zero3"), (3, "zero3-offload")):
        settings = load_zero_settings(f"configs/deepspeed/{name}.yaml")
        cfg = build_deepspeed_config(settings, train, accumulation=4)
        assert cfg["zero_optimization"]["stage"] == stage
        assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"],
                cfg["gradient_accumulation_steps"], cfg["gradient_clipping"]) == (128, 16, 4, 0.5)
    assert load_zero_settings("zero2") == load_zero_settings("configs/deepspeed/zero2.yaml")


def test_deepspeed_file_may_not_set_derived_keys(tmp_path):
    bad = tmp_path / "ds.yaml"
    bad.write_text("train_batch_size: 64\nzero_optimization: {stage: 2}\n")
    with pytest.raises(ConfigError, match="train.global_batch_cells") as err:
        load_zero_settings(str(bad))
    assert str(bad) in err.value.message
    with pytest.raises(ConfigError, match="not found"):
        load_zero_settings("zero9")


def _cfg(*overrides: str):
    return load_config(ROOT / "configs/runs/tiny.yaml", ["data.stores=[unused.zarr]", *overrides])


@pytest.mark.parametrize("overrides, env, match", [
    (["train.precision=bf16"], {}, "needs a GPU"),
    (["train.engine=plain"], {"RANK": "0", "WORLD_SIZE": "2"}, "runs one process"),
    (["train.global_batch_cells=96", "train.micro_batch_cells=32"], {"RANK": "1", "WORLD_SIZE": "2"},
     "not divisible"),
    (["train.keep_last=0"], {}, "keep_last"),
    (["train.deepspeed_config=nope.yaml"], {}, "not found"),
    (["data.stores=[]"], {}, "data.stores is empty"),
])
def test_bad_configs_rejected_before_training(monkeypatch, tmp_path, overrides, env, match):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=match):
        pretrain(_cfg(*overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was created


def test_plan_for_two_ranks(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    plan = make_plan(_cfg(), DistEnv.from_env())
    assert (plan.env.rank, plan.accumulation, plan.precision) == (1, 1, "fp32")
    assert plan.deepspeed_config["gradient_accumulation_steps"] == 1


@pytest.mark.parametrize("script, env, expected", [
    ("local.sh", {"NPROC": "2"}, "-m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=2 "
                                 "-m sc_fm pretrain --config c.yaml -o run"),
    ("local.sh", {"NPROC": "2", "LAUNCHER": "deepspeed"}, "--num_gpus=2 --master_port=29500 --no_local_rank "
                                                          "--module sc_fm pretrain --config c.yaml -o run"),
    ("multinode.sh", {"MASTER_ADDR": "node0", "HOSTFILE": "hosts"}, "--hostfile=hosts --master_addr=node0"),
    ("multinode.sh", {"MASTER_ADDR": "node0", "LAUNCHER": "torchrun", "NNODES": "4", "NODE_RANK": "3",
                      "NPROC": "8"}, "--nnodes=4 --node_rank=3 --nproc_per_node=8"),
    ("slurm.sbatch", {"GPUS_PER_NODE": "4"}, "srun --ntasks-per-node=1"),
])
def test_launchers_dry_run(script, env, expected):
    cmd = ["bash", str(ROOT / "launch" / script), "--dry-run", "--config", "c.yaml", "-o", "run"]
    out = subprocess.run(cmd, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
                         check=True)
    assert expected in out.stdout
    assert out.stdout.rstrip().endswith("pretrain --config c.yaml -o run")


def test_out_of_memory_names_the_settings_to_change():
    from sc_fm.train import TrainingError
    from sc_fm.train.guards import out_of_memory_advice

    with pytest.raises(TrainingError, match="train.micro_batch_cells=64") as err:
        with out_of_memory_advice(micro_batch_cells=64, max_len=2048):
            raise torch.OutOfMemoryError("CUDA out of memory")
    assert "model.activation_checkpointing=true" in err.value.message
    assert "zero3" in err.value.message
