"""Baselines and scores for one evaluation set: the part shared by ``scfm benchmark`` and the
pretraining hook (which computes the baselines once and scores the model every N steps)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd

from sc_fm.config import EvalConfig
from sc_fm.evaluate.baselines import (baseline_view, harmony_embedding, pca_embedding, random_embedding,
                                      scvi_embedding)
from sc_fm.evaluate.inputs import require_counts, require_labels, require_obs_column, stored_values
from sc_fm.evaluate.metrics import ScibSettings, label_transfer, scib_scores

PCA, SCVI, HARMONY, RANDOM = "PCA (unintegrated)", "scVI", "Harmony", "Random control"
HARMONY_SKIPPED = "Harmony was not run: it needs a batch column (--batch-key)."


@dataclass
class Baselines:
    """Baseline embeddings by method name, and the unintegrated PCA used by the PCR metric."""

    embeddings: dict[str, np.ndarray]
    pre_integrated: np.ndarray
    notes: list[str] = field(default_factory=list)


@dataclass
class BaselineMethods:
    """The deterministic PCA, and each seeded baseline as a function of its seed (in report order)."""

    pca: np.ndarray
    seeded: dict[str, Callable[[int], np.ndarray]]
    notes: list[str] = field(default_factory=list)


def check_evaluation_set(adata, batch_key: str | None, label_key: str, where: str) -> None:
    """Label (and batch) columns present; enough cells and labels to score; ``X`` holds raw counts."""
    require_obs_column(adata, label_key, "--label-key", where)
    require_obs_column(adata, batch_key, "--batch-key", where)
    require_labels(adata, label_key, where)
    require_counts(stored_values(adata.X), where)


def single_batch_labels(obs: pd.DataFrame, batch_key: str | None, label_key: str) -> str | None:
    """The report's note on labels found in one batch only (None when every label is in two or more)."""
    if batch_key is None:
        return None
    batches = obs.groupby(obs[label_key].astype(str), observed=True)[batch_key].agg(
        lambda b: sorted(set(b.astype(str))))
    alone = {label: found[0] for label, found in batches.items() if len(found) == 1}
    if not alone:
        return None
    listed = ", ".join(f"{label} (only in {batch})" for label, batch in sorted(alone.items()))
    return (f"labels in one batch only: {listed}. They are scored like every label: the bio metrics "
            f"include them, and the batch metrics, computed within each label, find no other batch to "
            f"mix them with")


def baseline_methods(adata, batch_key: str | None, config: EvalConfig) -> BaselineMethods:
    """Builds the HVG view and its PCA once; scVI, Harmony (only with a batch key) and the random
    control are returned as ``seed -> embedding`` so that a caller can repeat them over seeds."""
    view = baseline_view(adata, batch_key, config.n_hvg)
    pca = pca_embedding(view, config.n_pcs, config.seed)
    seeded: dict[str, Callable[[int], np.ndarray]] = {SCVI: partial(scvi_embedding, view, batch_key, config)}
    notes = []
    if batch_key is not None:
        seeded[HARMONY] = partial(harmony_embedding, pca, adata.obs, batch_key)
    else:
        notes.append(HARMONY_SKIPPED)
    seeded[RANDOM] = partial(random_embedding, adata.n_obs, config.scvi_latent)
    return BaselineMethods(pca, seeded, notes)


def compute_baselines(adata, batch_key: str | None, config: EvalConfig) -> Baselines:
    """PCA on batch-aware HVGs, scVI, Harmony (with a batch key) and a random control, one seed
    (``config.seed``), on ``adata``'s cells."""
    methods = baseline_methods(adata, batch_key, config)
    embeddings = {PCA: methods.pca, **{name: fn(config.seed) for name, fn in methods.seeded.items()}}
    return Baselines(embeddings, methods.pca, methods.notes)


def score_embeddings(embeddings: dict[str, np.ndarray], obs: pd.DataFrame, batch_key: str | None,
                     label_key: str, pre_integrated: np.ndarray, config: EvalConfig,
                     settings: ScibSettings = ScibSettings()) -> pd.DataFrame:
    """scIB metrics plus held-out label-transfer accuracy, one row per embedding."""
    table = scib_scores(embeddings, obs, batch_key, label_key, pre_integrated, settings)
    labels = obs[label_key].to_numpy()
    transfer = pd.DataFrame({name: label_transfer(emb, labels, config.transfer_test_fraction,
                                                  config.knn_neighbors, config.seed)
                             for name, emb in embeddings.items()}).T
    return table.join(transfer)
