"""The names inside a pretraining run directory, in one place for every reader and writer
(the training loop, checkpoints, adaptation, the demo and the commands)::

    RUN_DIR/config.yaml              the resolved run config (also in every checkpoint and final/)
    RUN_DIR/metrics.jsonl            one JSON line per logged step
    RUN_DIR/tracking.json            the MLflow run (sc_fm.tracking.TRACKING_FILE)
    RUN_DIR/checkpoints/step_N/      resumable checkpoints (trainer_state.json, rank_R.json, ...)
    RUN_DIR/final/                   the Pretrained directory of the last step
"""

from __future__ import annotations

from pathlib import Path

RUN_CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
TRAINER_STATE_FILE = "trainer_state.json"


def run_config_of(directory: str | Path) -> Path | None:
    """The run config saved in ``directory`` (a run directory, a checkpoint or ``final/``), if any."""
    path = Path(directory) / RUN_CONFIG_FILE
    return path if path.is_file() else None
