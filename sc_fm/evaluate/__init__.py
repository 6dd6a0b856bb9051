"""Embeddings into AnnData, PCA/scVI/random baselines, scIB metrics, reports, and the pretraining hook."""

from sc_fm.evaluate.benchmark import BenchmarkResult, run_benchmark
from sc_fm.evaluate.checkpoint import Pretrained, load_checkpoint
from sc_fm.evaluate.embedding import EMBEDDING_KEY, embed_counts, inference_tokenizer
from sc_fm.evaluate.genes import GeneMapping, map_genes
from sc_fm.evaluate.h5ad import embed_h5ad
from sc_fm.evaluate.hook import PretrainEvaluator
from sc_fm.evaluate.metrics import ScibSettings, label_transfer, scib_scores
from sc_fm.evaluate.scoring import Baselines, compute_baselines, score_embeddings

__all__ = ["Baselines", "BenchmarkResult", "EMBEDDING_KEY", "GeneMapping", "Pretrained", "PretrainEvaluator",
           "ScibSettings", "compute_baselines", "embed_counts", "embed_h5ad", "inference_tokenizer",
           "label_transfer", "load_checkpoint", "map_genes", "run_benchmark", "score_embeddings",
           "scib_scores"]
