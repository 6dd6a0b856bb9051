"""Failures during training, turned into messages that say what to change."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from sc_fm.batch import LOSS_NAMES
from sc_fm.errors import ScFmError


class TrainingError(ScFmError):
    """Training stopped for a reason the user can act on (divergence, out of memory)."""


def check_finite(metrics: dict[str, float], step: int, latest_checkpoint: Callable[[], Path | None]) -> None:
    """Stop on a NaN/Inf loss before anything is saved, so the last good checkpoint stays intact.

    ``latest_checkpoint`` is only called on failure (it lists the checkpoint directory).
    """
    bad = [k for k in LOSS_NAMES if not math.isfinite(metrics[k])]
    if not bad:
        return
    last_checkpoint = latest_checkpoint()
    kept = (f"the last good checkpoint is {last_checkpoint} (resume from it with --resume)"
            if last_checkpoint else "no checkpoint had been written yet")
    raise TrainingError(f"{bad[0]} became {metrics[bad[0]]} at step {step}; training stopped and {kept}",
                        "training", "lower train.lr, raise train.warmup_steps, keep train.grad_clip > 0, "
                                    "or use train.precision=bf16/fp32 instead of fp16")


@contextlib.contextmanager
def out_of_memory_advice(micro_batch_cells: int, max_len: int) -> Iterator[None]:
    """Re-raise a device out-of-memory error with the config changes that reduce memory."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        raise TrainingError(
            f"the accelerator ran out of memory with train.micro_batch_cells={micro_batch_cells} "
            f"and tokenizer.max_len={max_len}", "training",
            "halve train.micro_batch_cells (accumulation grows so train.global_batch_cells stays "
            "the same), shorten tokenizer.max_len, set model.activation_checkpointing=true, or use "
            "train.deepspeed_config=configs/deepspeed/zero3.yaml or zero3-offload.yaml") from err
