"""The end-to-end demo (``make demo``): corpus -> DeepSpeed pretraining -> embedding -> scVI comparison on two tissues.

1. Builds the embedded default corpus: a simulated multi-study atlas, the real sc_mixology
   mixture profiles and the real PBMC pretraining sets (``configs/data/pbmc.yaml``). The
   vocabulary is each real tissue's most-detected and most variable genes (``demo_vocabulary``),
   also the simulated atlas's genes. The real cells of the evaluation sets are not in it:
   neither their counts, nor their genes, nor their statistics reach the checkpoint.
2. Pretrains the ``tiny`` model under DeepSpeed on the CPU, on the corpus's real cells: the
   demo run holds the simulated studies out (``configs/runs/demo.yaml``, ``data.exclude``).
3. Embeds held-out real cells (``scfm embed``): the cell-line singlets, and pbmc4k as shipped,
   named by gene symbols. Benchmarks the checkpoint on both held-out tissues (``scfm
   benchmark``): the singlets and the PBMC cross-chemistry set, against its own untrained
   start, PCA, scVI, Harmony and a random control, logging each report to MLflow.

Usage: ``python -m sc_fm.demo --out demo_out [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sc_fm.config import CONFIGS_DIR, PrepareConfig, load_config
from sc_fm.rundir import FINAL_DIR, METRICS_FILE, RUN_CONFIG_FILE
from sc_fm.simulate import AtlasSpec, write_atlas_h5ad
from sc_fm.vocab import GeneVocab, default_vocab

SIMULATED_OBS = {"dataset": "dataset", "assay": "assay", "donor": "donor", "cell_type": "cell_type"}
RUN_CONFIG = CONFIGS_DIR / "runs" / "demo.yaml"
MIXTURE_SOURCES = CONFIGS_DIR / "data" / "sc_mixology_mixtures.yaml"
PBMC_SOURCES = CONFIGS_DIR / "data" / "pbmc.yaml"


@dataclass
class DemoSize:
    """How big the demo is: the full one, or ``--quick`` for a smoke run."""

    sim_cells: int
    vocab_detected: int  # per tissue: its most-detected genes ...
    vocab_variable: int  # ... and its most variable ones (seurat_v3)
    max_steps: int
    scvi_epochs: int
    adapt_steps: int


FULL = DemoSize(sim_cells=1500, vocab_detected=2500, vocab_variable=1000, max_steps=150, scvi_epochs=150, adapt_steps=300)
QUICK = DemoSize(sim_cells=1500, vocab_detected=2500, vocab_variable=1000, max_steps=20, scvi_epochs=30, adapt_steps=10)


def demo_vocabulary(size: DemoSize) -> tuple[GeneVocab, "pd.DataFrame"]:  # noqa: F821
    """The demo's vocabulary, chosen from its real pretraining sources only (never the evaluation
    cells): per tissue, the most-detected and the most variable genes (``data_pipelines.selection``),
    with GENCODE v44 symbols; and what each tissue contributed."""
    from data_pipelines.selection import select_vocabulary
    from sc_fm.datasets import load_pbmc_pretraining, load_sc_mixology_mixtures

    reference = default_vocab()
    mixtures = load_sc_mixology_mixtures()
    mixtures = mixtures[:, reference.lookup(list(mixtures.var_names)) >= 0]
    groups = {"sc_mixology mixtures": mixtures, "PBMC (donor A, sorted 3,426)": load_pbmc_pretraining()}
    return select_vocabulary(groups, reference, size.vocab_detected, size.vocab_variable, batch_key="batch",
                             name="demo")


def build_corpus(out: Path, size: DemoSize, progress: bool = True) -> Path:
    """Simulated atlas + real mixture profiles + real PBMC -> ``out/corpus.zarr``; the vocabulary
    (``demo_vocabulary``) is also the simulated atlas's genes. Prints each source's gene mapping."""
    from data_pipelines import SourceSpec, prepare

    sources = out / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    vocab, contributed = demo_vocabulary(size)
    vocab_file = sources / "vocab.tsv"
    vocab.save(vocab_file)
    spec = AtlasSpec(n_cells=size.sim_cells, n_genes=vocab.n_genes, n_studies=4, n_cell_types=6, seed=0,
                     gene_ids=list(vocab.gene_ids), study_names=[f"simulated_study_{i}" for i in range(4)])
    atlas = write_atlas_h5ad(sources / "simulated_atlas.h5ad", spec)
    store = out / "corpus.zarr"
    summary = prepare([SourceSpec(path=atlas, dataset="simulated_atlas", obs_columns=SIMULATED_OBS), MIXTURE_SOURCES,
                       PBMC_SOURCES], store, PrepareConfig(vocab=str(vocab_file), min_gene_overlap=0.01),
                      progress=progress)
    if progress:
        print(f"vocabulary: {vocab.n_genes} genes\n{contributed.to_string(index=False)}")
        print(summary.table())
    return store


def pretrain(out: Path, store: Path, size: DemoSize, overrides: list[str] = ()) -> Path:
    """``python -m sc_fm pretrain`` (DeepSpeed, CPU) with the demo's settings and ``overrides``;
    returns ``final/``."""
    run_dir = out / "run"
    command = [sys.executable, "-m", "sc_fm", "pretrain", "--config", str(RUN_CONFIG), "-o", str(run_dir),
               f"data.stores=[{store}]", f"train.max_steps={size.max_steps}", *overrides]
    subprocess.run(command, check=True)
    return run_dir / FINAL_DIR


def checkpoints_per_seed(checkpoint: str | Path | None, out: Path, size: DemoSize,
                         seeds: list[int]) -> tuple[dict[int, Path], Path | None, float]:
    """``{seed: checkpoint}``: ``checkpoint`` for every seed or, by default, one pretraining per
    seed (``train.seed`` = the seed) on the demo corpus in ``out``, which never saw the benchmarks'
    evaluation cells; a seed finished by an earlier run in ``out`` is reused. Then the corpus store
    (None with ``checkpoint``) and the seconds pretraining took. One pretraining per seed lets a
    benchmark's spread hold the pretraining's own randomness, not only its evaluation's."""
    began = time.perf_counter()
    if checkpoint is not None:
        return {seed: Path(checkpoint) for seed in seeds}, None, 0.0
    store = out / "corpus.zarr"
    if not store.exists():
        build_corpus(out, size, progress=False)
    checkpoints = {}
    for seed in seeds:
        seed_dir = out / f"pretrain_seed{seed}"
        final = seed_dir / "run" / FINAL_DIR  # where ``pretrain`` writes it
        checkpoints[seed] = final if final.is_dir() else pretrain(seed_dir, store, size, [f"train.seed={seed}"])
    return checkpoints, store, time.perf_counter() - began


def pretraining_time(run_dir: Path, stage_s: float) -> str:
    """How the pretraining stage's time divides into steps and start-up, from the run's own
    per-step rates (``metrics.jsonl``): a stall shows as loop time above steps x steady step."""
    cells = load_config(run_dir / RUN_CONFIG_FILE).train.global_batch_cells
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    step_s = np.array([cells / r["cells_per_s"] for r in records if r.get("cells_per_s")])
    if not len(step_s):
        return "pretraining: no steps recorded"
    steady, loop = float(np.median(step_s)), float(step_s.sum())
    return (f"pretraining: {len(step_s)} steps in {loop:.0f} s, {loop / (len(step_s) * steady):.2f}x steps x "
            f"the steady {steady:.2f} s/step; the stage took {stage_s:.0f} s "
            f"({stage_s / (len(step_s) * steady):.2f}x), the rest being start-up (imports, DeepSpeed, "
            "the co-expression start, MLflow) and the final save")


def evaluate(out: Path, checkpoint: Path, size: DemoSize) -> dict[str, "BenchmarkResult"]:  # noqa: F821
    """Embed held-out real cells into h5ad files (the singlets, and pbmc4k as shipped: named by
    gene symbols), then benchmark the checkpoint on both held-out tissues (one seed each) against
    its same start, a random-initialised control, scVI, Harmony, PCA and a random control:
    - the cell-line singlets (batch = protocol), also adapted to them (``scfm adapt``) beside
      the same adaptation from scratch;
    - the PBMC cross-chemistry set (batch = 10x chemistry), zero-shot only: its adaptation rows
      would add about 5 minutes on 2 cores, past the demo's budget (``benchmarks/quality.py
      --dataset pbmc`` runs them)."""
    from sc_fm.candidates import seeded_rows
    from sc_fm.datasets import (PBMC_BATCH, PBMC_LABEL, load_pbmc_cross_chemistry, load_sc_mixology,
                                resource_path)
    from sc_fm.evaluate import run_benchmark
    from sc_fm.pretrained import embed_h5ad

    run = load_config(RUN_CONFIG, [f"eval.scvi_epochs={size.scvi_epochs}", "benchmark.scratch_multipliers=[1]"])
    singlets = out / "sc_mixology_singlets.h5ad"
    load_sc_mixology().write_h5ad(singlets)
    run.embed.input.batch_key = "batch"
    print(embed_h5ad(checkpoint, singlets, out / "sc_mixology_embedded.h5ad", run.embed).mapping.summary())
    run.embed.input.batch_key = "chemistry"
    print("pbmc4k (gene symbols): " + embed_h5ad(checkpoint, resource_path("pbmc", "pbmc4k_10x_v2.h5ad"),
                                                 out / "pbmc4k_embedded.h5ad", run.embed).mapping.summary())
    results = {}
    for name, adata, batch_key, label_key, adapt_steps in (
            ("sc_mixology singlets", load_sc_mixology(), "batch", "cell_type", size.adapt_steps),
            ("PBMC across 10x chemistries", load_pbmc_cross_chemistry(), PBMC_BATCH, PBMC_LABEL, 0)):
        run.benchmark.adapt_steps = adapt_steps
        run.benchmark.input.batch_key = batch_key
        report = out / ("report" if not results else "report_pbmc")
        rows = seeded_rows([checkpoint], adata, run.benchmark, report)
        results[name] = run_benchmark(adata, batch_key, label_key, report, [checkpoint], run.eval,
                                      inputs=run.benchmark.input, tracking=run.tracking, seeded_candidates=rows)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sc_fm.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    parser.add_argument("--quick", action="store_true", help="a small corpus and 20 steps (smoke run)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    size = QUICK if args.quick else FULL
    timings = {}
    began = time.perf_counter()
    stage = began
    store = build_corpus(out, size)
    timings["corpus"], stage = time.perf_counter() - stage, time.perf_counter()
    checkpoint = pretrain(out, store, size)
    timings["pretrain"], stage = time.perf_counter() - stage, time.perf_counter()
    results = evaluate(out, checkpoint, size)
    timings["embed + benchmarks"] = time.perf_counter() - stage
    for name, result in results.items():
        print(f"\n{name}:")
        print("\n".join(result.verdict))
    print("stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"; total {time.perf_counter() - began:.0f} s")
    print(pretraining_time(checkpoint.parent, timings["pretrain"]))
    print("reports: " + ", ".join(str(result.report) for result in results.values()))
    print(f"embedded cells: {out / 'sc_mixology_embedded.h5ad'}, {out / 'pbmc4k_embedded.h5ad'} (obsm['X_scfm'])")
    tracking = next(iter(results.values())).tracking
    runs = dict.fromkeys(result.tracking["run_id"] for result in results.values())  # both may share one
    print(f"MLflow database: {tracking['tracking_uri']} (run {', '.join(runs)}); "
          f"browse with: mlflow ui --backend-store-uri {tracking['tracking_uri']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
