"""Cell-type classifiers that need no foundation model, and how annotation is scored.

The published comparisons of fine-tuned single-cell foundation models found that a logistic
regression on log-normalised highly variable genes often matches them, so every annotation
result of sc_fm is read beside that baseline: ``scfm finetune`` prints it on its own validation
split and ``scfm benchmark --task annotation`` scores it on the query. This module sits below
both ``sc_fm.finetune``'s command and ``sc_fm.evaluate`` so that they share one definition.

Every function takes the cells and a boolean ``train`` mask; labels are read only where
``train`` is True, so the other cells' labels can never shape a prediction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sc_fm.config import CP10K

N_HVG = 2000  # highly variable genes of the logistic-regression baseline
KNN_NEIGHBORS = 15
ACCURACY, MACRO_F1 = "Accuracy", "Macro F1"


def hvg_genes(counts, n_hvg: int = N_HVG) -> np.ndarray:
    """Boolean mask of the ``n_hvg`` highly variable genes of ``counts`` (cells x genes, raw).

    seurat_v3 on the counts; where its loess fit fails (as on pre-filtered gene panels, whose
    mean-variance curve has too few low-expressed genes) the ``seurat`` flavour on log data.
    Every gene when there are no more than ``n_hvg``."""
    import anndata
    import scanpy as sc

    n_genes = counts.shape[1]
    if n_genes <= n_hvg:
        return np.ones(n_genes, bool)
    holder = anndata.AnnData(sp.csr_matrix(counts, dtype=np.float32))
    holder.var_names = [f"g{i}" for i in range(n_genes)]
    try:
        sc.pp.highly_variable_genes(holder, n_top_genes=n_hvg, flavor="seurat_v3")
    except ValueError:
        sc.pp.normalize_total(holder, target_sum=CP10K)
        sc.pp.log1p(holder)
        sc.pp.highly_variable_genes(holder, n_top_genes=n_hvg, flavor="seurat")
    return holder.var["highly_variable"].to_numpy()


def log_cp10k(counts) -> np.ndarray:
    """log1p of counts per 10,000 (dense ``[cells, genes]`` float32)."""
    counts = sp.csr_matrix(counts, dtype=np.float32)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scaled = sp.diags(CP10K / np.maximum(totals, 1.0)) @ counts
    return np.log1p(scaled.toarray()).astype(np.float32)


def hvg_features(counts, train: np.ndarray, n_hvg: int = N_HVG) -> np.ndarray:
    """log1p(CP10k) of the training cells' HVGs, each gene scaled on the training cells."""
    from sklearn.preprocessing import StandardScaler

    counts = sp.csr_matrix(counts)
    genes = hvg_genes(counts[np.flatnonzero(train)], n_hvg)
    values = log_cp10k(counts[:, np.flatnonzero(genes)])
    return StandardScaler().fit(values[train]).transform(values).astype(np.float32)


def logreg_hvg(counts, labels, train: np.ndarray, n_hvg: int = N_HVG) -> np.ndarray:
    """``LogReg (HVG)``: ``LogisticRegression(max_iter=1000, C=1)`` on ``hvg_features``; the
    predicted label of every cell."""
    from sklearn.linear_model import LogisticRegression

    features = hvg_features(counts, train, n_hvg)
    model = LogisticRegression(max_iter=1000, C=1.0).fit(features[train], _train_labels(labels, train))
    return model.predict(features)


def knn_classify(embedding: np.ndarray, labels, train: np.ndarray, k: int = KNN_NEIGHBORS) -> np.ndarray:
    """Majority label of each cell's ``k`` nearest training cells in ``embedding``."""
    from sklearn.neighbors import KNeighborsClassifier

    model = KNeighborsClassifier(n_neighbors=min(k, int(train.sum())))
    return model.fit(embedding[train], _train_labels(labels, train)).predict(embedding)


def linear_probe(embedding: np.ndarray, labels, train: np.ndarray) -> np.ndarray:
    """A logistic regression on the standardised frozen ``embedding`` (the model's outputs only)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(embedding[train])
    model = LogisticRegression(max_iter=1000, C=1.0).fit(scaler.transform(embedding[train]),
                                                         _train_labels(labels, train))
    return model.predict(scaler.transform(embedding))


def _train_labels(labels, train: np.ndarray) -> np.ndarray:
    return np.asarray(labels, dtype=object)[train].astype(str)


def annotation_scores(truth, predicted, classes=None) -> dict[str, float]:
    """``Accuracy`` and ``Macro F1`` of ``predicted`` against ``truth``.

    ``classes``: the classes that count (those of both reference and query); accuracy is then
    over the cells of those classes, macro-F1 averages their F1 over every cell (a cell of
    another class predicted as one of them is a false positive). None: every class, as
    scikit-learn's ``accuracy_score`` and ``f1_score(average="macro")``."""
    from sklearn.metrics import accuracy_score, f1_score

    truth, predicted = np.asarray(truth).astype(str), np.asarray(predicted).astype(str)
    if classes is None:
        return {ACCURACY: float(accuracy_score(truth, predicted)),
                MACRO_F1: float(f1_score(truth, predicted, average="macro", zero_division=0))}
    classes = sorted(map(str, classes))
    counted = np.isin(truth, classes)
    return {ACCURACY: float(accuracy_score(truth[counted], predicted[counted])),
            MACRO_F1: float(f1_score(truth, predicted, labels=classes, average="macro", zero_division=0))}


def per_class_f1(truth, predicted, classes) -> pd.Series:
    """F1 of each of ``classes`` (index: class)."""
    from sklearn.metrics import f1_score

    classes = sorted(map(str, classes))
    values = f1_score(np.asarray(truth).astype(str), np.asarray(predicted).astype(str), labels=classes,
                      average=None, zero_division=0)
    return pd.Series(values, index=classes, name="F1")
