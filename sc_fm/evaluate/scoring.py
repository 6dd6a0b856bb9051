"""Baselines and scores for one evaluation set: the part shared by ``scfm benchmark`` and the
pretraining hook (which computes the baselines once and scores the model every N steps)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sc_fm.config import EvalConfig
from sc_fm.evaluate.baselines import baseline_view, pca_embedding, random_embedding, scvi_embedding
from sc_fm.evaluate.inputs import require_counts, require_obs_column, stored_values
from sc_fm.evaluate.metrics import ScibSettings, label_transfer, scib_scores

PCA, SCVI, RANDOM = "PCA (unintegrated)", "scVI", "Random control"


@dataclass
class Baselines:
    """Baseline embeddings by method name, and the unintegrated PCA used by the PCR metric."""

    embeddings: dict[str, np.ndarray]
    pre_integrated: np.ndarray


def check_evaluation_set(adata, batch_key: str | None, label_key: str, where: str) -> None:
    """Label (and batch) columns present; ``X`` holds raw counts."""
    require_obs_column(adata, label_key, "--label-key", where)
    require_obs_column(adata, batch_key, "--batch-key", where)
    require_counts(stored_values(adata.X), where)


def compute_baselines(adata, batch_key: str | None, config: EvalConfig) -> Baselines:
    """PCA on batch-aware HVGs, scVI and a random control on ``adata``'s cells."""
    view = baseline_view(adata, batch_key, config.n_hvg)
    pca = pca_embedding(view, config.n_pcs, config.seed)
    embeddings = {PCA: pca, SCVI: scvi_embedding(view, batch_key, config),
                  RANDOM: random_embedding(adata.n_obs, config.scvi_latent, config.seed)}
    return Baselines(embeddings, pca)


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
