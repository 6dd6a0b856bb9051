"""Pretraining engine: DeepSpeed or plain PyTorch, exact-resume checkpoints, MLflow tracking."""

from sc_fm.train.checkpoint import CheckpointManager
from sc_fm.train.distributed import DistEnv, accumulation_steps
from sc_fm.train.guards import TrainingError
from sc_fm.train.loop import FINAL_DIR, METRICS_FILE, pretrain
from sc_fm.train.plan import TrainPlan, make_plan
from sc_fm.train.schedule import WarmupCosine, build_scheduler
from sc_fm.train.tracking import TRACKING_FILE, RunTracker, resolve_tracking_uri

__all__ = ["CheckpointManager", "DistEnv", "FINAL_DIR", "METRICS_FILE", "RunTracker", "TRACKING_FILE",
           "TrainPlan", "TrainingError", "WarmupCosine", "accumulation_steps", "build_scheduler", "make_plan",
           "pretrain", "resolve_tracking_uri"]
