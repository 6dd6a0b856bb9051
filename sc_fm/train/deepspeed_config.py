"""DeepSpeed configuration: ZeRO settings from ``configs/deepspeed/*.yaml``, the rest derived.

The YAML files hold only what is DeepSpeed-specific (ZeRO stage, buckets, offload). Batch sizes,
accumulation, clipping, precision, optimizer and schedule come from ``train.*`` so that one
value is never set in two places; a DeepSpeed file that sets them is rejected. Mixed precision
is ``torch.autocast`` in the engine (fp32 weights, gradients and optimizer), so DeepSpeed's own
``bf16``/``fp16`` weight casting stays off.
"""

from __future__ import annotations


from sc_fm.config import TrainConfig, read_yaml, shipped_config
from sc_fm.errors import ConfigError

DERIVED_KEYS = {
    "train_batch_size": "train.global_batch_cells",
    "train_micro_batch_size_per_gpu": "train.micro_batch_cells",
    "gradient_accumulation_steps": "train.global_batch_cells / (micro x world size)",
    "gradient_clipping": "train.grad_clip",
    "optimizer": "train.lr and train.weight_decay",
    "scheduler": "train.warmup_steps and train.min_lr_ratio",
    "bf16": "train.precision",
    "fp16": "train.precision",
}


def load_zero_settings(name: str) -> dict:
    """The user part of the DeepSpeed config, checked for keys that sc_fm derives."""
    path = shipped_config(name, "deepspeed")
    raw = read_yaml(path)
    clashes = sorted(set(raw) & set(DERIVED_KEYS))
    if clashes:
        key = clashes[0]
        raise ConfigError(f"sets {key!r}, which sc_fm derives from {DERIVED_KEYS[key]}", str(path),
                          f"remove {key!r} from the DeepSpeed file and set {DERIVED_KEYS[key]} instead")
    stage = raw.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"zero_optimization.stage is {stage!r}", str(path), "use stage 0, 1, 2 or 3")
    return raw


def uses_cpu_offload(settings: dict) -> bool:
    zero = settings.get("zero_optimization", {})
    return zero.get("offload_optimizer", {}).get("device", "none") == "cpu"


def build_deepspeed_config(settings: dict, train: TrainConfig, accumulation: int) -> dict:
    """The full dict passed to ``deepspeed.initialize``."""
    config = dict(settings)
    config.update(
        train_batch_size=train.global_batch_cells,
        train_micro_batch_size_per_gpu=train.micro_batch_cells,
        gradient_accumulation_steps=accumulation,
        gradient_clipping=train.grad_clip,
    )
    config.setdefault("steps_per_print", 10**9)  # progress is reported by sc_fm, not DeepSpeed
    config.setdefault("wall_clock_breakdown", False)
    if uses_cpu_offload(settings):
        config.setdefault("zero_force_ds_cpu_optimizer", True)
    return config
