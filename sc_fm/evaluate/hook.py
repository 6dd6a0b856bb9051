"""Evaluation during pretraining: the held-out real set, scored beside PCA and scVI.

Baselines are computed once when the evaluator is built; each call embeds the same cells
with the current weights and returns scIB bio/batch/total and label-transfer accuracy, so a
user watches in MLflow whether the model is overtaking scVI while it trains.
"""

from __future__ import annotations

import numpy as np

from sc_fm.config import EvalConfig, InputSettings
from sc_fm.evaluate.metrics import BATCH, BIO, KNN_ACCURACY, LOGREG_ACCURACY, TOTAL
from sc_fm.evaluate.scoring import PCA, SCVI, check_evaluation_set, compute_baselines, score_embeddings
from sc_fm.pretrained import InputCells, embed_cells, map_genes
from sc_fm.tokenize import CellTokenizer

_KEYS = {BIO: "bio", BATCH: "batch", TOTAL: "total", KNN_ACCURACY: "knn_accuracy",
         LOGREG_ACCURACY: "logreg_accuracy"}


def load_evaluation_set(config: EvalConfig):
    """``eval.h5ad`` or, by default, the shipped sc_mixology singlets."""
    import anndata

    from sc_fm.datasets import load_sc_mixology

    return anndata.read_h5ad(config.h5ad) if config.h5ad else load_sc_mixology()


def _named(scores, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{short}": float(scores[col]) for col, short in _KEYS.items()
            if np.isfinite(scores[col])}


class PretrainEvaluator:
    """``baseline_metrics`` once; ``evaluator(model)`` -> current scores of the model.

    The engine's evaluation callback (``sc_fm.train.callbacks.Evaluator``): ``scfm pretrain``
    builds it from the run's tokenizer and hands it to the trainer."""

    def __init__(self, eval_config: EvalConfig, tokenizer: CellTokenizer, adata=None):
        self.config = eval_config
        self.adata = adata if adata is not None else load_evaluation_set(eval_config)
        where = eval_config.h5ad or "eval set"
        check_evaluation_set(self.adata, eval_config.batch_key, eval_config.label_key, where)
        # the evaluation set meets the model through the same input contract as a user's cells
        inputs = InputSettings(batch_key=eval_config.batch_key)
        mapping = map_genes(self.adata.var_names, tokenizer.vocab, inputs.min_gene_overlap, inputs.min_genes_mapped,
                            where)
        self.cells = InputCells.build(self.adata, mapping, tokenizer, inputs, where=where)
        self.baselines = compute_baselines(self.adata, eval_config.batch_key, eval_config)
        self.baseline_table = score_embeddings(self.baselines.embeddings, self.adata.obs,
                                               eval_config.batch_key, eval_config.label_key,
                                               self.baselines.pre_integrated, eval_config)

    @property
    def baseline_metrics(self) -> dict[str, float]:
        """``{"pca/total": ..., "scvi/bio": ...}`` for the PCA and scVI rows."""
        out = {}
        for method, prefix in ((PCA, "pca/"), (SCVI, "scvi/")):
            out.update(_named(self.baseline_table.loc[method], prefix))
        return out

    def embed(self, model) -> np.ndarray:
        """Embeddings of the evaluation cells with ``model``'s current weights."""
        return embed_cells(model, self.cells, self.config.embed_batch_cells, progress=False)

    def __call__(self, model) -> dict[str, float]:
        table = score_embeddings({"sc_fm": self.embed(model)}, self.adata.obs, self.config.batch_key,
                                 self.config.label_key, self.baselines.pre_integrated, self.config)
        return _named(table.loc["sc_fm"])
