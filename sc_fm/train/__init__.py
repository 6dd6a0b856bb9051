"""Pretraining engine: DeepSpeed or plain PyTorch, exact-resume checkpoints; evaluation and
tracking are applied from outside (``sc_fm.train.callbacks``, ``sc_fm.tracking``).

Names are imported on first use, so that ``sc_fm.train.engines`` or ``sc_fm.train.flops``
load without the loop's data, tracking and evaluation dependencies (``benchmarks/gpu.py``
runs on a machine that carries only the engine's wheels).
"""

from __future__ import annotations

import importlib

_WHERE = {"Evaluator": "callbacks", "EvaluatorFactory": "callbacks", "CheckpointManager": "checkpoint",
          "DistEnv": "distributed", "accumulation_steps": "distributed", "TrainingError": "guards",
          "FINAL_DIR": "loop", "METRICS_FILE": "loop", "pretrain": "loop", "TrainPlan": "plan",
          "make_plan": "plan", "WarmupCosine": "schedule", "build_scheduler": "schedule"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'sc_fm.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sc_fm.train.{_WHERE[name]}"), name)
