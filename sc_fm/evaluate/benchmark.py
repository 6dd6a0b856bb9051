"""``scfm benchmark``: sc_fm checkpoints against PCA, scVI, Harmony and a random control on the same cells,
every seeded method repeated over ``n_seeds`` seeds."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sc_fm.config import EvalConfig, InputSettings, TrackingConfig
from sc_fm.evaluate.metrics import ScibSettings
from sc_fm.evaluate.report import verdict, verdicts, write_report
from sc_fm.evaluate.scoring import (HARMONY, PCA, RANDOM, SCVI, baseline_methods, check_evaluation_set,
                                    score_embeddings, single_batch_labels)
from sc_fm.evaluate.seeds import METHOD, SEED, seed_list, summarise
from sc_fm.tracking import log_report, metric_name


VERDICT_REFERENCES = (SCVI, HARMONY, RANDOM)


@dataclass
class BenchmarkResult:
    """``table``: one row per method (means, ``<score> sd``, ``Seeds``); ``per_seed``: one row per
    method and seed (``method``, ``seed`` — empty for a method without a seed — then the scores)."""

    table: pd.DataFrame
    report: Path
    verdict: list[str]
    tracking: dict[str, str] = field(default_factory=dict)
    per_seed: pd.DataFrame | None = None
    seeds: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def checkpoint_names(names: list[str], paths: list[str | Path]) -> list[str]:
    """Report names of checkpoints: ``sc_fm-<size>``, with the directory name added on a clash."""
    out: list[str] = []
    for name, path in zip(names, paths):
        out.append(name if name not in out else f"{name} ({Path(path).name})")
    return out


SAME_START = "(untrained, same start)"


def same_start_row(name: str) -> str:
    """The row of checkpoint ``name``'s own untrained start."""
    return f"{name} {SAME_START}"


def checkpoint_embeddings(adata, checkpoints: list[str | Path], inputs: InputSettings, where: str, progress: bool
                          ) -> tuple[dict[str, np.ndarray], list[str]]:
    """``{"sc_fm-<size>": embedding}`` per checkpoint, zero-shot, then its same start (the exact
    untrained weights its pretraining began from, embedded the same way), and a line per
    checkpoint saying how it embeds (for the report)."""
    from sc_fm.pretrained import Pretrained

    loaded = [Pretrained.load(path) for path in checkpoints]
    out: dict[str, np.ndarray] = {}
    described = []
    for name, pretrained in zip(checkpoint_names([p.name for p in loaded], checkpoints), loaded):
        models = {name: pretrained}
        if pretrained.has_start:
            models[same_start_row(name)] = pretrained.same_start()
        for row, model in models.items():
            out[row] = model.embed(adata, inputs, key_added=None, progress=progress, where=where)
        start = ("" if pretrained.has_start else
                 "; no saved start (written before starts were kept), so no same-start row")
        described.append(f"{name}: {embedding_settings(pretrained, inputs.batch_key)}{start}")
    return out, described


def start_verdicts(table: pd.DataFrame, names: list[str]) -> list[str]:
    """What each of ``names`` with a same-start row scores untrained and what pretraining added
    to it, in words."""
    from sc_fm.evaluate.metrics import BATCH, BIO, TOTAL

    lines = []
    for name in names:
        row = same_start_row(name)
        if row not in table.index:
            continue
        start, trained = table.loc[row], table.loc[name]
        lines.append(f"{name}: its untrained start scores total {start[TOTAL]:.3f} (bio {start[BIO]:.3f}, "
                     f"batch {start[BATCH]:.3f}); pretraining changes that by {trained[TOTAL] - start[TOTAL]:+.3f} "
                     f"(bio {trained[BIO] - start[BIO]:+.3f}, batch {trained[BATCH] - start[BATCH]:+.3f})")
        lines.extend(verdict(table, row, [name]))
    return lines


def embedding_settings(pretrained, batch_key: str | None) -> str:
    """What a checkpoint's embedding is: pooling, bottleneck, conditions, normalisers, gene start."""
    m, t = pretrained.model.config, pretrained.tokenizer
    width = (f"the {m.cell_latent}-d bottleneck mean of the cell objective" if m.cell_objective != "none"
             and m.cell_embedding == "latent" else f"the {m.d_model}-d pooled state")
    objective = "no cell objective" if m.cell_objective == "none" else f"cell objective {m.cell_objective}"
    conditions = ("condition tokens in the encoder, dropped (<unk>) at inference" if m.encoder_conditions else
                  "conditions only in the decoder, so none enter the embedding")
    groups = (f"gene normalisers per {batch_key} of the input" if batch_key and t.normalises_by_group
              else "global gene normalisers")
    return (f"{m.pooling} pooling into {width} ({objective}); {conditions}; {groups}; {t.config.scheme} tokens, "
            f"{t.config.max_len} per cell; gene table started as {m.gene_init}")


def run_benchmark(adata, batch_key: str | None, label_key: str, out_dir: str | Path,
                  checkpoints: list[str | Path] = (), config: EvalConfig | None = None,
                  extra_embeddings: dict[str, np.ndarray] | None = None, inputs: InputSettings | None = None,
                  tracking: TrackingConfig | None = None, progress: bool = True, where: str = "input", *, n_seeds: int = 1,
                  seeded_candidates: dict[str, Callable[[int], np.ndarray]] | None = None) -> BenchmarkResult:
    """Score every embedding, write the report into ``out_dir`` and log it to MLflow as ``tracking``
    says (``sc_fm.tracking.log_report``; None: not logged).

    Candidates are the checkpoints (embedded once, meeting ``adata`` through ``inputs`` with
    ``batch_key`` as its batch column), ``extra_embeddings`` (fixed arrays) and
    ``seeded_candidates`` (``name -> f(seed) -> [cells, dim]`` array, called once per seed).
    Every seeded method — scVI, Harmony, the random control and each seeded candidate — runs
    with seeds ``config.seed .. config.seed + n_seeds - 1``; the table holds their means and sds.
    """
    config = config or EvalConfig()
    seeds = seed_list(config.seed, n_seeds, where)
    check_evaluation_set(adata, batch_key, label_key, where)
    seeded_candidates = dict(seeded_candidates or {})
    inputs = dataclasses.replace(inputs or InputSettings(), batch_key=batch_key)
    candidates, described = checkpoint_embeddings(adata, list(checkpoints), inputs, where, progress)
    candidates.update(extra_embeddings or {})
    clash = set(candidates) & set(seeded_candidates) | (set(candidates) | set(seeded_candidates)) & {
        PCA, SCVI, HARMONY, RANDOM}
    if clash:
        raise ValueError(f"candidate names {sorted(clash)} are used twice (or by a baseline); rename them")
    baselines = baseline_methods(adata, batch_key, config)
    one_batch = single_batch_labels(adata.obs, batch_key, label_key)
    if one_batch:
        baselines.notes.append(one_batch)
    fixed = {**candidates, PCA: baselines.pca}
    seeded = {**seeded_candidates, **baselines.seeded}
    order = [*candidates, *seeded_candidates, PCA, *baselines.seeded]
    runs: dict[str, tuple[str, int | None, np.ndarray]] = {}  # scoring key -> (method, seed, embedding)
    for name in order:
        if name in fixed:
            runs[name] = (name, None, fixed[name])
            continue
        for seed in seeds:
            key = name if len(seeds) == 1 else f"{name} [seed {seed}]"
            runs[key] = (name, seed, np.asarray(seeded[name](seed), dtype=np.float32))
    settings = ScibSettings()
    scores = score_embeddings({key: emb for key, (_, _, emb) in runs.items()}, adata.obs, batch_key,
                              label_key,
                              baselines.pca,
                              config, settings)
    per_seed = scores.loc[list(runs)].reset_index(drop=True)
    per_seed.insert(0, SEED, pd.array([seed for _, seed, _ in runs.values()], dtype="Int64"))
    per_seed.insert(0, METHOD, [name for name, _, _ in runs.values()])
    table = summarise(per_seed, set(seeded))
    names = [*candidates, *seeded_candidates]
    lines = start_verdicts(table, names) + verdicts(table, names, VERDICT_REFERENCES)
    first = {}
    for name, _, emb in runs.values():
        first.setdefault(name, emb)
    report = write_report(table, first, adata.obs, batch_key, label_key, out_dir, lines, settings,
                          config.seed,
                          per_seed=per_seed, notes=baselines.notes, seeds=seeds, model_lines=described)
    info = (log_report(tracking, "benchmark", out_dir, benchmark_metrics(table), files=out_dir,
                       checkpoints=list(checkpoints)) if tracking is not None else None)
    return BenchmarkResult(table, report, lines, info or {}, per_seed, seeds, baselines.notes)


def benchmark_metrics(table: pd.DataFrame) -> dict[str, float]:
    """``benchmark/<method>/<score>`` for every score in the table."""
    return {metric_name("benchmark", method, column): float(value)
            for method, row in table.iterrows() for column, value in row.items() if pd.notna(value)}
