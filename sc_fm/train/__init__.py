"""Pretraining engine: DeepSpeed or plain PyTorch, exact-resume checkpoints; evaluation and
tracking are applied from outside (``sc_fm.train.callbacks``, ``sc_fm.tracking``)."""

from sc_fm.train.callbacks import Evaluator, EvaluatorFactory
from sc_fm.train.checkpoint import CheckpointManager
from sc_fm.train.distributed import DistEnv, accumulation_steps
from sc_fm.train.guards import TrainingError
from sc_fm.train.loop import FINAL_DIR, METRICS_FILE, pretrain
from sc_fm.train.plan import TrainPlan, make_plan
from sc_fm.train.schedule import WarmupCosine, build_scheduler

__all__ = ["CheckpointManager", "DistEnv", "Evaluator", "EvaluatorFactory", "FINAL_DIR", "METRICS_FILE",
           "TrainPlan", "TrainingError", "WarmupCosine", "accumulation_steps", "build_scheduler", "make_plan",
           "pretrain"]
