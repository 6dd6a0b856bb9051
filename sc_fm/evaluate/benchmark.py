"""``scfm benchmark``: sc_fm checkpoints against PCA, scVI and a random control on the same cells."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sc_fm.config import EvalConfig
from sc_fm.evaluate.checkpoint import load_checkpoint
from sc_fm.evaluate.embedding import embed_counts, inference_tokenizer
from sc_fm.evaluate.genes import map_genes
from sc_fm.evaluate.metrics import ScibSettings
from sc_fm.evaluate.report import write_report, verdict
from sc_fm.evaluate.scoring import SCVI, check_evaluation_set, compute_baselines, score_embeddings
from sc_fm.evaluate.tracking import log_benchmark


@dataclass
class BenchmarkResult:
    table: pd.DataFrame
    report: Path
    verdict: list[str]
    tracking: dict[str, str] = field(default_factory=dict)


def checkpoint_embeddings(adata, checkpoints: list[str | Path], batch_key: str | None, config: EvalConfig,
                          min_gene_overlap: float, where: str, progress: bool) -> dict[str, np.ndarray]:
    """``{"sc_fm-<size>": embedding}`` per checkpoint (the directory name is added on a clash)."""
    out: dict[str, np.ndarray] = {}
    for path in checkpoints:
        pretrained = load_checkpoint(path)
        name = pretrained.name if pretrained.name not in out else f"{pretrained.name} ({Path(path).name})"
        mapping = map_genes(adata.var_names, pretrained.tokenizer.vocab, min_gene_overlap, where)
        tokenizer, groups = inference_tokenizer(pretrained.tokenizer, adata, mapping, batch_key, where=where)
        out[name] = embed_counts(pretrained.model, tokenizer, adata, mapping, groups,
                                 batch_cells=config.embed_batch_cells, progress=progress, where=where)
    return out


def run_benchmark(adata, batch_key: str | None, label_key: str, out_dir: str | Path,
                  checkpoints: list[str | Path] = (), config: EvalConfig | None = None,
                  extra_embeddings: dict[str, np.ndarray] | None = None, min_gene_overlap: float = 0.1,
                  track: bool = True, progress: bool = True, where: str = "input") -> BenchmarkResult:
    """Score every embedding, write the report into ``out_dir`` and log it to MLflow."""
    config = config or EvalConfig()
    check_evaluation_set(adata, batch_key, label_key, where)
    candidates = checkpoint_embeddings(adata, list(checkpoints), batch_key, config, min_gene_overlap, where,
                                       progress)
    candidates.update(extra_embeddings or {})
    baselines = compute_baselines(adata, batch_key, config)
    embeddings = {**candidates, **baselines.embeddings}
    settings = ScibSettings()
    table = score_embeddings(embeddings, adata.obs, batch_key, label_key, baselines.pre_integrated, config,
                             settings)
    lines = verdict(table, SCVI, list(candidates))
    report = write_report(table, embeddings, adata.obs, batch_key, label_key, out_dir, lines, settings,
                          config.seed)
    tracking = log_benchmark(table, out_dir, list(checkpoints)) if track else {}
    return BenchmarkResult(table, report, lines, tracking)
