"""MLflow runs, shared by pretraining (rank 0 only) and every report (``log_report``: benchmark,
explain, fine-tuning), all under the user's ``tracking`` section.

A run is identified by ``RUN_DIR/tracking.json`` (``tracking_uri``, ``experiment_id``,
``run_id``): a resumed run reopens it, and a benchmark of its checkpoint logs under it too.
The destination always comes from the user (``tracking.uri``, ``$MLFLOW_TRACKING_URI``, or
the local default); a ``tracking.json`` found in a checkpoint is only followed when it names
that same destination or a local database inside the checkpoint's own run directory, so a
downloaded checkpoint cannot send a report to a server of its choosing.
Metrics are buffered and sent in batches, so per-step logging costs one request per
``train.log_every`` steps instead of one per step. Every write holds Ctrl-C and SIGTERM until it
returns (``sc_fm.signals.deferred_interrupts``), so a stopped command can still mark its run.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from sc_fm.config import TrackingConfig
from sc_fm.errors import ConfigError
from sc_fm.signals import deferred_interrupts

TRACKING_FILE = "tracking.json"
_PARAMS_PER_REQUEST = 100  # MLflow's log_batch limit


def resolve_tracking_uri(config: TrackingConfig, run_dir: str | Path) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else SQLite beside the run directory."""
    if config.uri:
        return config.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(run_dir).resolve().parent / 'mlflow.db'}"


def recorded_run(checkpoint: str | Path, destination: str) -> dict | None:
    """The ``tracking.json`` of a checkpoint (in it, or in its run directory above ``final/`` or
    ``checkpoints/step_N/``) when it may be trusted for ``destination`` (see the module doc)."""
    directory = Path(checkpoint).resolve()
    for run_dir in (directory, directory.parent, directory.parent.parent):
        path = run_dir / TRACKING_FILE
        if not path.is_file():
            continue
        try:
            info = json.loads(path.read_text())
            uri = str(info["tracking_uri"])
            _ = info["experiment_id"], info["run_id"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return None  # unreadable: log to a new run rather than fail the benchmark
        return info if uri == destination or _local_database_inside(uri, run_dir) else None
    return None


def _local_database_inside(uri: str, run_dir: Path) -> bool:
    if not uri.startswith("sqlite:///"):
        return False
    database = Path(uri[len("sqlite:///"):]).resolve()
    return database.is_relative_to(run_dir.resolve())


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": "0.001"}`` (MLflow params are strings)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return flat


def system_info(world_size: int) -> dict[str, str]:
    """Where the run executed, logged as tags."""
    import psutil
    import torch

    info = {
        "sys.hostname": socket.gethostname(),
        "sys.platform": platform.platform(),
        "sys.python": platform.python_version(),
        "sys.torch": torch.__version__,
        "sys.cpu_count": str(os.cpu_count()),
        "sys.memory_gib": f"{psutil.virtual_memory().total / 2**30:.1f}",
        "sys.world_size": str(world_size),
        "sys.accelerator": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    try:
        info["sys.deepspeed"] = importlib.metadata.version("deepspeed")  # without importing it
    except importlib.metadata.PackageNotFoundError:
        pass
    return info


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite-tracked run sit beside the database, not in the working directory."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


class RunTracker:
    """One MLflow run: params at start, buffered per-step metrics, artifacts, final status."""

    def __init__(self, uri: str, experiment_id: str, run_id: str):
        from mlflow import MlflowClient

        self.uri = uri
        self.experiment_id = experiment_id
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=uri)
        self._pending: list = []

    @property
    def info(self) -> dict[str, str]:
        return {"tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}

    @classmethod
    def start(cls, config: TrackingConfig, run_dir: str | Path, params: dict, tags: dict[str, str],
              resume: bool) -> "RunTracker":
        """Open the run recorded in ``RUN_DIR/tracking.json`` when resuming, else a new one."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        run_dir = Path(run_dir)
        uri = resolve_tracking_uri(config, run_dir)
        client = MlflowClient(tracking_uri=uri)
        recorded = run_dir / TRACKING_FILE
        try:
            with deferred_interrupts():
                if resume and recorded.is_file():
                    info = json.loads(recorded.read_text())
                    if info.get("tracking_uri") == uri:
                        client.update_run(info["run_id"], status="RUNNING")
                        return cls(uri, info["experiment_id"], info["run_id"])
                experiment = client.get_experiment_by_name(config.experiment)
                experiment_id = (experiment.experiment_id if experiment is not None else
                                 client.create_experiment(config.experiment, _artifact_location(uri)))
                run = client.create_run(experiment_id, tags=tags, run_name=config.run_name or run_dir.name)
        except MlflowException as err:
            raise ConfigError(f"cannot open an MLflow run at {uri} ({err.message})", "tracking.uri",
                              "start the tracking server, point tracking.uri at a reachable one, or set "
                              "tracking.enabled=false") from err
        tracker = cls(uri, experiment_id, run.info.run_id)
        tracker.log_params(params)
        tracker.write_info(run_dir)
        return tracker

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        with deferred_interrupts():
            for lo in range(0, len(items), _PARAMS_PER_REQUEST):
                self.client.log_batch(self.run_id, params=items[lo:lo + _PARAMS_PER_REQUEST])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step``; sent by ``flush``."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), stamp, step) for k, v in metrics.items()]

    def flush(self) -> None:
        with deferred_interrupts():
            while self._pending:
                batch, self._pending = self._pending[:1000], self._pending[1000:]
                self.client.log_batch(self.run_id, metrics=batch)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str) -> None:
        with deferred_interrupts():
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def write_info(self, directory: str | Path) -> None:
        """``DIRECTORY/tracking.json``: lets later stages (evaluation) log under this run."""
        (Path(directory) / TRACKING_FILE).write_text(json.dumps(self.info, indent=2) + "\n")

    def finish(self, status: str) -> None:
        """Flush and close the run as ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self.flush()
        with deferred_interrupts():
            self.client.set_terminated(self.run_id, status=status)


def log_report(tracking: TrackingConfig, kind: str, run_dir: str | Path, metrics: dict[str, float], *,
               files: str | Path | None = None, checkpoints: Sequence[str | Path] = (),
               params: dict[str, str] | None = None,
               history: Sequence[tuple[int, dict[str, float]]] = ()) -> dict[str, str] | None:
    """Log one command's report to MLflow as ``tracking`` says; None when ``tracking.enabled`` is off.

    The run: that of the first of ``checkpoints`` whose ``tracking.json`` may be trusted for the
    user's destination (``recorded_run``), else a new run in experiment
    ``<tracking.experiment>-<kind>`` named ``tracking.run_name`` or ``run_dir``'s name, recorded in
    ``run_dir/tracking.json``. ``metrics`` are logged at step 0 (after ``history``: ``(step,
    metrics)`` pairs such as a training curve, at the last step of it), ``files`` (a directory)
    under ``<kind>/``, and ``params`` on a new run.
    """
    if not tracking.enabled:
        return None
    run_dir = Path(run_dir)
    config = dataclasses.replace(tracking, experiment=f"{tracking.experiment}-{kind}",
                                 run_name=tracking.run_name or run_dir.name)
    destination = resolve_tracking_uri(config, run_dir)
    info = next((found for c in checkpoints if (found := recorded_run(c, destination)) is not None), None)
    if info is not None:
        tracker = RunTracker(info["tracking_uri"], info["experiment_id"], info["run_id"])
    else:
        tracker = RunTracker.start(config, run_dir, params=params or {}, tags={"sc_fm.kind": kind}, resume=False)
    for step, values in history:
        tracker.log_metrics(values, step)
    tracker.log_metrics(metrics, history[-1][0] if history else 0)
    tracker.flush()
    if files is not None:
        tracker.log_artifacts(files, kind)
    if info is None:
        tracker.finish("FINISHED")
    return tracker.info


def metric_name(*parts: object) -> str:
    """``a/b/c`` with every character MLflow refuses in a metric name (it allows letters, digits
    and ``_-./ :``) replaced by ``_``."""
    return re.sub(r"[^\w\-./ ]", "_", "/".join(map(str, parts)))
