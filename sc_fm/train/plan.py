"""Everything about a run that can be checked before any data or model is touched.

A config whose batch sizes, world size, precision or engine do not fit is rejected here,
so that a job fails in seconds instead of after loading the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sc_fm.config import RunConfig
from sc_fm.errors import ConfigError
from sc_fm.model.io import available_memory
from sc_fm.train.deepspeed_config import build_deepspeed_config, load_zero_settings
from sc_fm.train.distributed import DistEnv, accumulation_steps


@dataclass(frozen=True)
class TrainPlan:
    env: DistEnv
    device: torch.device
    precision: str  # "fp32" | "bf16" | "fp16"
    accumulation: int  # micro-batches per optimizer step on each rank
    deepspeed_config: dict | None  # None for the plain engine


def resolve_precision(requested: str, device: torch.device, engine: str) -> str:
    """``auto``: fp32 on CPU; bf16 on GPUs that have it, else fp16 (plain) or fp32 (DeepSpeed)."""
    if device.type != "cuda":
        if requested in ("bf16", "fp16"):
            raise ConfigError(f"train.precision={requested} needs a GPU; this run is on the CPU", "config",
                              "set train.precision=auto or fp32")
        return "fp32"
    bf16 = torch.cuda.is_bf16_supported()
    if requested == "auto":
        return "bf16" if bf16 else ("fp16" if engine == "plain" else "fp32")
    if requested == "bf16" and not bf16:
        raise ConfigError(f"{torch.cuda.get_device_name()} has no bf16", "train.precision",
                          "set train.precision=auto")
    if requested == "fp16" and engine == "deepspeed":
        raise ConfigError("fp16 with dynamic loss scaling is available on the plain engine only",
                          "train.precision", "use bf16 (Ampere or newer), fp32, or train.engine=plain")
    return requested


def check_train_config(cfg: RunConfig) -> None:
    t = cfg.train
    rules = [
        (t.max_steps >= 0, "train.max_steps must be >= 0 (0 saves the untrained start as final/)"),
        (t.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
        (t.lr > 0, "train.lr must be positive"),
        (0.0 <= t.min_lr_ratio <= 1.0, "train.min_lr_ratio must be in [0, 1]"),
        (t.grad_clip >= 0, "train.grad_clip must be >= 0 (0 disables clipping)"),
        (t.checkpoint_every >= 1, "train.checkpoint_every must be at least 1"),
        (t.keep_last >= 1, "train.keep_last must be at least 1"),
        (t.log_every >= 1, "train.log_every must be at least 1"),
        (t.eval_every >= 0, "train.eval_every must be >= 0 (0 disables evaluation)"),
        (bool(cfg.data.stores), "data.stores is empty"),
    ]
    for ok, what in rules:
        if not ok:
            fix = "list corpus stores, e.g. data.stores=[corpus.zarr]" if what.startswith("data") else None
            raise ConfigError(what, "config", fix)


# What each packed token of a held micro-batch takes at the least (an int64 gene id and label).
BYTES_PER_HELD_TOKEN = 16


def check_step_memory(cfg: RunConfig, accumulation: int) -> None:
    """A step holds all its ``accumulation`` micro-batches at once: refuse batch settings whose
    batches alone exceed the available memory (a ``global_batch_cells`` inherited from a
    checkpoint's config.yaml, say) before anything is read."""
    t = cfg.train
    need = accumulation * t.micro_batch_cells * cfg.tokenizer.max_len * BYTES_PER_HELD_TOKEN
    free = available_memory()
    if need > free:
        raise ConfigError(f"one optimizer step holds {accumulation:,} micro-batches of {t.micro_batch_cells} "
                          f"cells x {cfg.tokenizer.max_len} tokens (train.global_batch_cells="
                          f"{t.global_batch_cells:,}): at least {need / 2**30:,.1f} GiB, and "
                          f"{free / 2**30:,.1f} GiB is available", "train.global_batch_cells",
                          "lower train.global_batch_cells (or tokenizer.max_len)")


def make_plan(cfg: RunConfig, env: DistEnv) -> TrainPlan:
    """Check ``cfg`` against this process layout and resolve engine settings."""
    check_train_config(cfg)
    if cfg.train.engine == "plain" and env.world_size > 1:
        raise ConfigError(f"train.engine=plain runs one process, but WORLD_SIZE={env.world_size}",
                          "config", "use train.engine=deepspeed for multi-process training")
    accumulation = accumulation_steps(cfg.train, env.world_size)
    check_step_memory(cfg, accumulation)
    device = env.device()
    precision = resolve_precision(cfg.train.precision, device, cfg.train.engine)
    ds_config = None
    if cfg.train.engine == "deepspeed":
        settings = load_zero_settings(cfg.train.deepspeed_config)
        ds_config = build_deepspeed_config(settings, cfg.train, accumulation)
    return TrainPlan(env, device, precision, accumulation, ds_config)
