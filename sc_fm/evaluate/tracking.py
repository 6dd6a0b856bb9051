"""Benchmark results into MLflow: under the checkpoint's own run when it may be trusted, else a new run."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from sc_fm.config import TrackingConfig
from sc_fm.tracking import RunTracker, recorded_run, resolve_tracking_uri


def metric_name(method: str, column: str) -> str:
    """MLflow metric names allow letters, digits and ``_-./ :``."""
    return re.sub(r"[^\w\-./ ]", "_", f"benchmark/{method}/{column}")


def log_benchmark(table: pd.DataFrame, report_dir: str | Path, checkpoints: list[str | Path],
                  step: int = 0, tracking: TrackingConfig | None = None) -> dict[str, str]:
    """Log every score and the report directory; returns the run's ``tracking.json``-style info.
    ``tracking.uri`` (when given) says where, as for pretraining."""
    report_dir = Path(report_dir)
    config = TrackingConfig(uri=tracking.uri if tracking else None, experiment="sc_fm-benchmark",
                            run_name=report_dir.name)
    destination = resolve_tracking_uri(config, report_dir)
    info = next((found for c in checkpoints if (found := recorded_run(c, destination)) is not None), None)
    if info is not None:
        tracker = RunTracker(info["tracking_uri"], info["experiment_id"], info["run_id"])
    else:
        tracker = RunTracker.start(config,
                                   report_dir, params={"report_dir": str(report_dir)},
                                   tags={"sc_fm.kind": "benchmark"}, resume=False)
    metrics = {metric_name(method, column): float(value)
               for method, row in table.iterrows() for column, value in row.items() if pd.notna(value)}
    tracker.log_metrics(metrics, step)
    tracker.flush()
    tracker.log_artifacts(report_dir, "benchmark")
    if info is None:
        tracker.finish("FINISHED")
    return tracker.info
