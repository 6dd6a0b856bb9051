"""Benchmark results into MLflow: under the checkpoint's own run when it has one, else a new run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from sc_fm.config import TrackingConfig


def find_tracking_info(checkpoint: str | Path) -> dict | None:
    """``tracking.json`` of a checkpoint: in it, or in its run directory (from ``final/`` or
    ``checkpoints/step_N/``)."""
    directory = Path(checkpoint).resolve()
    for candidate in (directory, directory.parent, directory.parent.parent):
        path = candidate / "tracking.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _metric_name(method: str, column: str) -> str:
    """MLflow metric names allow letters, digits and ``_-./ :``."""
    return re.sub(r"[^\w\-./ ]", "_", f"benchmark/{method}/{column}")


def log_benchmark(table: pd.DataFrame, report_dir: str | Path, checkpoints: list[str | Path],
                  step: int = 0) -> dict[str, str]:
    """Log every score and the report directory; returns the run's ``tracking.json``-style info."""
    from sc_fm.train.tracking import RunTracker

    report_dir = Path(report_dir)
    info = next((found for c in checkpoints if (found := find_tracking_info(c)) is not None), None)
    if info is not None:
        tracker = RunTracker(info["tracking_uri"], info["experiment_id"], info["run_id"])
    else:
        tracker = RunTracker.start(TrackingConfig(experiment="sc_fm-benchmark", run_name=report_dir.name),
                                   report_dir, params={"report_dir": str(report_dir)},
                                   tags={"sc_fm.kind": "benchmark"}, resume=False)
    metrics = {_metric_name(method, column): float(value)
               for method, row in table.iterrows() for column, value in row.items() if pd.notna(value)}
    tracker.log_metrics(metrics, step)
    tracker.flush()
    tracker.log_artifacts(report_dir, "benchmark")
    if info is None:
        tracker.finish("FINISHED")
    return tracker.info
