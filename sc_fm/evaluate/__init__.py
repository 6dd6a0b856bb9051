"""Baselines (PCA, scVI, Harmony, random), scIB metrics, scoring, reports, and the pretraining hook.

Embedding user cells belongs to ``sc_fm.pretrained``; this package scores embeddings."""

from sc_fm.evaluate.benchmark import BenchmarkResult, run_benchmark
from sc_fm.evaluate.hook import PretrainEvaluator
from sc_fm.evaluate.metrics import ScibSettings, label_transfer, scib_scores
from sc_fm.evaluate.scoring import Baselines, compute_baselines, score_embeddings

__all__ = ["Baselines", "BenchmarkResult", "PretrainEvaluator", "ScibSettings", "compute_baselines",
           "label_transfer", "run_benchmark", "score_embeddings", "scib_scores"]
