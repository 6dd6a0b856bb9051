"""``scfm benchmark --task annotation``: label a query data set from an annotated reference.

The reference is the cells of the chosen batches with their labels; the query is every other
cell, its labels dropped before any method runs (``annotation_split``). Each method may use
the query's counts, as users do, but only the reference's labels; fine-tuning selects on a
split of the reference. Every method is scored on the query (``sc_fm.classify``): accuracy,
macro-F1 over the classes of both reference and query, and per-class F1.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sc_fm.classify import ACCURACY, MACRO_F1, annotation_scores, knn_classify, linear_probe, logreg_hvg
from sc_fm.config import EvalConfig, FinetuneConfig, InputSettings, TrackingConfig
from sc_fm.evaluate.annotation_report import (FINETUNED, KNN_PCA, KNN_SCVI, LOGREG, PROBE, SCANVI, START_FINETUNED,
                                              ZERO_SHOT, per_class_table, verdict_lines, write_annotation_report)
from sc_fm.evaluate.annotation_split import AnnotationSplit, require_scorable
from sc_fm.evaluate.baselines import baseline_view, pca_embedding, train_scvi
from sc_fm.evaluate.seeds import METHOD, SEED, seed_list, summarise

VERDICT_REFERENCES = (LOGREG, SCANVI)
UNLABELLED = "__unlabelled__"  # scANVI's category of the query cells
REFERENCE_LABEL = "_scfm_reference_label"  # the reference's labels in scVI's AnnData (query: UNLABELLED)


@dataclass
class Method:
    """``predict(seed)`` -> the predicted label of every query cell; ``seeded``: whether the seed matters."""

    name: str
    predict: Callable[[int], np.ndarray]
    seeded: bool


@dataclass
class AnnotationResult:
    """``table``: one row per method (Accuracy, Macro F1, their sds, Seeds); ``per_seed``: one row
    per method and seed; ``predictions``: the first seed's query predictions per method."""

    table: pd.DataFrame
    per_seed: pd.DataFrame
    per_class: pd.DataFrame
    predictions: dict[str, np.ndarray]
    verdict: list[str]
    seeds: list[int]
    report: Path | None = None
    tracking: dict[str, str] = field(default_factory=dict)


class ScviMethods:
    """``kNN (scVI)`` and ``scANVI`` from one scVI model per seed, fitted unsupervised on reference
    plus query; scANVI starts from it (``from_scvi_model``) with the query unlabelled."""

    def __init__(self, split: AnnotationSplit, view, config: EvalConfig):
        self.split, self.config = split, config
        self.view = view.copy()
        self.view.obs[REFERENCE_LABEL] = np.where(split.reference, split.labels(), UNLABELLED).astype(str)
        self._model: tuple[int, object] | None = None

    def model(self, seed: int):
        if self._model is None or self._model[0] != seed:
            self._model = (seed, train_scvi(self.view, self.split.batch_key, self.config, seed))
        return self._model[1]

    def knn(self, seed: int) -> np.ndarray:
        latent = np.asarray(self.model(seed).get_latent_representation(), np.float32)
        return knn_classify(latent, self.split.labels(), self.split.reference,
                            self.config.knn_neighbors)[self.split.query]

    def scanvi(self, seed: int) -> np.ndarray:
        import scvi

        scvi.settings.seed = seed
        model = scvi.model.SCANVI.from_scvi_model(self.model(seed), unlabeled_category=UNLABELLED,
                                                   labels_key=REFERENCE_LABEL)
        model.train(accelerator="cpu", enable_progress_bar=False)  # scvi-tools' default epochs
        return np.asarray(model.predict()).astype(str)[self.split.query]


class CheckpointMethods:
    """The four rows of one checkpoint: kNN and a linear probe on its frozen embedding, fine-tuning
    from it, and the same fine-tuning from its own untrained start."""

    def __init__(self, path: str | Path, split: AnnotationSplit, config: FinetuneConfig, inputs: InputSettings,
                 progress: bool, where: str):
        from sc_fm.pretrained import Pretrained

        self.path, self.split, self.inputs = Path(path), split, inputs
        # fine-tuning meets the cells as the embedding does: the benchmark's input settings
        self.config = dataclasses.replace(config, input=inputs)
        self.progress, self.where = progress, where
        pretrained = Pretrained.load(path)
        pretrained.start_model()  # refuse a checkpoint without its saved start before any training
        self.name = pretrained.name
        self.embedding = pretrained.embed(split.cells, inputs, key_added=None, progress=progress, where=where)

    def methods(self, name: str, knn_neighbors: int) -> list[Method]:
        split = self.split
        return [
            Method(ZERO_SHOT.format(name), lambda seed: knn_classify(
                self.embedding, split.labels(), split.reference, knn_neighbors)[split.query], False),
            Method(PROBE.format(name), lambda seed: linear_probe(
                self.embedding, split.labels(), split.reference)[split.query], False),
            Method(FINETUNED.format(name), lambda seed: self.finetuned(seed, same_start=False), True),
            Method(START_FINETUNED.format(name), lambda seed: self.finetuned(seed, same_start=True), True),
        ]

    def finetuned(self, seed: int, same_start: bool) -> np.ndarray:
        """``scfm finetune`` on the reference (its validation split drawn from the reference), then
        the fine-tuned classifier's label for every query cell."""
        from sc_fm.finetune import encoder_lr, finetune, load_finetuned
        from sc_fm.pretrained import Pretrained

        split, label_key = self.split, self.config.label_key
        checkpoint = Pretrained.load(self.path)
        # the control trains at the checkpoint's rate too (its start has no run config of its own)
        config = dataclasses.replace(self.config, seed=seed, lr=encoder_lr(checkpoint, self.config))
        start = checkpoint.same_start() if same_start else checkpoint
        reference = split.cells[split.reference].copy()
        reference.obs[label_key] = split.reference_labels
        with tempfile.TemporaryDirectory(prefix="scfm_annotation_") as tmp:
            finetune(start, reference, tmp, config, progress=self.progress, where=self.where)
            tuned = load_finetuned(tmp)
        probabilities = tuned.probabilities(split.cells[split.query].copy(), self.inputs, self.where)
        return np.asarray(tuned.classes)[probabilities.argmax(axis=1)]


def checkpoint_row_names(paths: list[str | Path]) -> list[str]:
    """Report names of checkpoints: ``sc_fm-<size>``, with the directory name added on a clash."""
    from sc_fm.evaluate.benchmark import checkpoint_names
    from sc_fm.pretrained import Pretrained

    return checkpoint_names([Pretrained.load(p).name for p in paths], paths)


def annotation_methods(split: AnnotationSplit, checkpoints: list[str | Path], eval_config: EvalConfig,
                       finetune_config: FinetuneConfig, inputs: InputSettings | None = None,
                       progress: bool = True, where: str = "input") -> list[Method]:
    """Every method in report order: the baselines, then four rows per checkpoint (meeting the
    cells through ``inputs``, its batch column the split's)."""
    inputs = dataclasses.replace(inputs or InputSettings(), batch_key=split.batch_key)
    counts = split.cells.X
    labels = split.labels()
    view = baseline_view(split.cells, split.batch_key, eval_config.n_hvg)
    pca = pca_embedding(view, eval_config.n_pcs, eval_config.seed)
    scvi_methods = ScviMethods(split, view, eval_config)
    methods = [
        Method(LOGREG, lambda seed: logreg_hvg(counts, labels, split.reference)[split.query], False),
        Method(KNN_PCA, lambda seed: knn_classify(pca, labels, split.reference,
                                                  eval_config.knn_neighbors)[split.query], False),
        Method(KNN_SCVI, scvi_methods.knn, True),
        Method(SCANVI, scvi_methods.scanvi, True),
    ]
    for name, path in zip(checkpoint_row_names(checkpoints), checkpoints):
        rows = CheckpointMethods(path, split, finetune_config, inputs, progress, where)
        methods.extend(rows.methods(name, eval_config.knn_neighbors))
    return methods


def predict_all(methods: list[Method], seeds: list[int]) -> dict[str, list[np.ndarray]]:
    """Every method's query predictions, one array per seed it runs with (a method without a seed
    runs once); seed-major, so that scVI and scANVI share a model. Nothing here sees the query's
    labels."""
    predictions: dict[str, list[np.ndarray]] = {m.name: [] for m in methods}
    for i, seed in enumerate(seeds):
        for method in methods:
            if method.seeded or i == 0:
                predictions[method.name].append(np.asarray(method.predict(seed)).astype(str))
    return predictions


def score_predictions(split: AnnotationSplit, methods: list[Method], seeds: list[int],
                      predictions: dict[str, list[np.ndarray]]) -> pd.DataFrame:
    """One row per method and seed (``method``, ``seed``, ``Accuracy``, ``Macro F1``) on the
    labelled query cells."""
    scored = np.array([t is not None for t in split.truth])
    rows = []
    for method in methods:
        for seed, predicted in zip(seeds if method.seeded else [None], predictions[method.name]):
            rows.append({METHOD: method.name, SEED: seed,
                         **annotation_scores(split.truth[scored], predicted[scored], split.shared)})
    per_seed = pd.DataFrame(rows)
    per_seed[SEED] = pd.array(per_seed[SEED], dtype="Int64")
    return per_seed


def run_annotation(split: AnnotationSplit, checkpoints: list[str | Path], out_dir: str | Path,
                   eval_config: EvalConfig | None = None, finetune_config: FinetuneConfig | None = None,
                   *, n_seeds: int = 1, inputs: InputSettings | None = None,
                   tracking: TrackingConfig | None = None, progress: bool = True,
                   where: str = "input") -> AnnotationResult:
    """Run, score and report every method; log the report to MLflow as ``tracking`` says
    (``sc_fm.tracking.log_report``; None: not logged)."""
    require_scorable(split, where)
    eval_config = eval_config or EvalConfig()
    finetune_config = finetune_config or FinetuneConfig()
    seeds = seed_list(eval_config.seed, n_seeds, where)
    methods = annotation_methods(split, list(checkpoints), eval_config, finetune_config, inputs, progress, where)
    predictions = predict_all(methods, seeds)
    per_seed = score_predictions(split, methods, seeds, predictions)
    table = summarise(per_seed, {m.name for m in methods if m.seeded}, (ACCURACY, MACRO_F1))
    candidates = [m.name for m in methods[4:]]
    result = AnnotationResult(table, per_seed, per_class_table(split, predictions), {
        name: runs[0] for name, runs in predictions.items()}, verdict_lines(table, candidates, VERDICT_REFERENCES),
        seeds)
    result.report = write_annotation_report(result, split, out_dir, finetune_config)
    if tracking is not None:
        from sc_fm.evaluate.benchmark import benchmark_metrics
        from sc_fm.tracking import log_report

        result.tracking = log_report(tracking, "annotation", out_dir, benchmark_metrics(table), files=out_dir,
                                     checkpoints=list(checkpoints)) or {}
    return result
