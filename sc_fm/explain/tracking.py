"""The explanation into MLflow at the user's destination (``tracking.uri``, ``$MLFLOW_TRACKING_URI``
or the local default beside the report): under the checkpoint's own run when its
``tracking.json`` names that destination (``sc_fm.tracking.recorded_run``), else a new run."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pandas as pd

from sc_fm.config import TrackingConfig
from sc_fm.tracking import RunTracker, recorded_run, resolve_tracking_uri


def explain_metrics(markers: pd.DataFrame) -> dict[str, float]:
    """``explain/<group>/overlap_at_<k>`` (and ``random_at_<k>``, ``spearman``), plus group means."""
    metrics = {}
    for row in markers.itertuples():
        group = re.sub(r"[^\w\-./ ]", "_", str(row.group))
        metrics[f"explain/{group}/overlap_at_{row.k}"] = row.overlap
        metrics[f"explain/{group}/random_at_{row.k}"] = row.random_overlap
        if pd.notna(row.spearman):
            metrics[f"explain/{group}/spearman"] = row.spearman
    for k, part in markers.groupby("k"):
        metrics[f"explain/mean/overlap_at_{k}"] = float(part["overlap"].mean())
        metrics[f"explain/mean/random_at_{k}"] = float(part["random_overlap"].mean())
    return metrics


def log_explain(markers: pd.DataFrame, report_dir: str | Path, checkpoint: str | Path,
                tracking: TrackingConfig) -> dict[str, str]:
    """Log the marker figures and the report directory; returns the run's ``tracking.json``-style info."""
    report_dir = Path(report_dir)
    config = dataclasses.replace(tracking, experiment="sc_fm-explain",
                                 run_name=tracking.run_name or report_dir.name)
    info = recorded_run(checkpoint, resolve_tracking_uri(config, report_dir))
    if info is not None:
        tracker = RunTracker(info["tracking_uri"], info["experiment_id"], info["run_id"])
    else:
        tracker = RunTracker.start(config, report_dir, params={"report_dir": str(report_dir)},
                                   tags={"sc_fm.kind": "explain"}, resume=False)
    tracker.log_metrics(explain_metrics(markers), 0)
    tracker.flush()
    tracker.log_artifacts(report_dir, "explain")
    if info is None:
        tracker.finish("FINISHED")
    return tracker.info
