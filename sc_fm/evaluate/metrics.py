"""scIB metrics through ``scib-metrics`` with pinned settings, and label-transfer accuracy.

Settings are those of ``scib_metrics.benchmark.Benchmarker`` 0.5.10 by default (bio: isolated
labels, KMeans NMI/ARI, silhouette label, cLISI; batch: BRAS, iLISI, kBET, graph connectivity,
PCR comparison; pynndescent neighbours 15/50/90 with ``random_state=0``; total = 0.6 bio +
0.4 batch), so scores compare with published tables. Without a batch column only the bio
metrics run; batch scores are NaN ("not applicable") and the total is the bio score.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

BIO, BATCH, TOTAL = "Bio conservation", "Batch correction", "Total"
KNN_ACCURACY, LOGREG_ACCURACY = "kNN accuracy", "LogReg accuracy"
_PLACEHOLDER_BATCH = "_scfm_single_batch"


@dataclass(frozen=True)
class ScibSettings:
    """Everything that decides a score; printed in every report."""

    bio_metrics: tuple[str, ...] = ("isolated_labels", "nmi_ari_cluster_labels_kmeans", "silhouette_label",
                                    "clisi_knn")
    batch_metrics: tuple[str, ...] = ("bras", "ilisi_knn", "kbet_per_label", "graph_connectivity",
                                      "pcr_comparison")
    neighbours: str = "pynndescent k=15/50/90, random_state=0"
    pre_integrated: str = "PCA of the log-normalised HVG view (arpack)"
    bio_weight: float = 0.6
    batch_weight: float = 0.4
    min_max_scale: bool = False

    def describe(self) -> dict[str, str]:
        import scib_metrics

        out = {k: ", ".join(v) if isinstance(v, tuple) else str(v)
               for k, v in dataclasses.asdict(self).items()}
        return {"scib_metrics": scib_metrics.__version__, **out}


def scib_scores(embeddings: dict[str, np.ndarray], obs: pd.DataFrame, batch_key: str | None,
                label_key: str, pre_integrated: np.ndarray,
                settings: ScibSettings = ScibSettings()) -> pd.DataFrame:
    """One row per embedding: each metric, ``Bio conservation``, ``Batch correction``, ``Total``."""
    import anndata
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    obs = obs[[label_key] + ([batch_key] if batch_key else [])].copy()
    if batch_key is None:
        batch_key = _PLACEHOLDER_BATCH
        obs[batch_key] = "all"
    holder = anndata.AnnData(np.zeros((len(obs), 1), np.float32), obs=obs)
    holder.obsm["X_pre"] = np.asarray(pre_integrated, np.float32)
    for name, emb in embeddings.items():
        holder.obsm[name] = np.asarray(emb, np.float32)
    bio = BioConservation(**{f.name: f.name in settings.bio_metrics
                             for f in dataclasses.fields(BioConservation)})
    has_batch = batch_key != _PLACEHOLDER_BATCH
    batch = (BatchCorrection(**{f.name: f.name in settings.batch_metrics
                                for f in dataclasses.fields(BatchCorrection)}) if has_batch else None)
    bench = Benchmarker(holder, batch_key, label_key, list(embeddings), bio_conservation_metrics=bio,
                        batch_correction_metrics=batch, pre_integrated_embedding_obsm_key="X_pre",
                        progress_bar=False)
    bench.benchmark()
    table = bench.get_results(min_max_scale=settings.min_max_scale)
    table = table.drop(index="Metric Type").astype(float)
    if not has_batch:
        table[BATCH] = np.nan
    table[TOTAL] = (settings.bio_weight * table[BIO] + settings.batch_weight * table[BATCH]
                    if has_batch else table[BIO])
    table.index.name = "method"
    return table


def label_transfer(embedding: np.ndarray, labels: np.ndarray, test_fraction: float, n_neighbors: int,
                   seed: int) -> dict[str, float]:
    """Accuracy of kNN and logistic regression trained on some cells and scored on held-out ones."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels).astype(str)
    counts = pd.Series(labels).value_counts()
    stratify = labels if counts.min() >= 2 else None
    x_train, x_test, y_train, y_test = train_test_split(embedding, labels, test_size=test_fraction,
                                                        random_state=seed, stratify=stratify)
    knn = KNeighborsClassifier(n_neighbors=min(n_neighbors, len(x_train))).fit(x_train, y_train)
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, y_train)
    return {KNN_ACCURACY: float((knn.predict(x_test) == y_test).mean()),
            LOGREG_ACCURACY: float((logreg.predict(x_test) == y_test).mean())}
