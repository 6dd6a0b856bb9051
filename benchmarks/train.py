"""End-to-end pretraining throughput against the model-only step rate at the same size.

``pretrain`` (streaming loader + tokenizer + engine + progress + MLflow logging) is timed
against the bare model stepping on batches already in memory (forward + backward + clipping +
AdamW, nothing else): same simulated store, tokenizer, model size, batch and accumulation, in
one process run. The figure is end-to-end tokens/s as a fraction of the model-only rate, so
it says what the data side and the engine cost; the target is 0.9 (the ratio is that
fraction itself, so ``ratio >= target`` is the goal). Both engines are measured: DeepSpeed
ZeRO-2 (the default) and the plain PyTorch loop. Steady state only: the first steps
(allocation, DeepSpeed set-up) are excluded from every rate. Checkpoints follow the run
config's cadence (every 50 steps for ``tiny``), so the short timed window holds none and the
final save falls outside it. The model-only rate is measured before and after the
end-to-end runs and averaged, to damp drift on a shared machine.

    .venv/bin/python benchmarks/train.py --quick
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from sc_fm.config import CONFIGS_DIR, PrepareConfig, QCConfig, RunConfig, load_config
from sc_fm.simulate import AtlasSpec, write_atlas_h5ad

WARMUP_STEPS = 3
TARGET = 0.9


def build_store(workdir: Path, n_cells: int, n_genes: int) -> Path:
    from data_pipelines import SourceSpec, prepare

    spec = AtlasSpec(n_cells=n_cells, n_genes=n_genes, n_studies=3, mean_depth=3000.0,
                     empty_fraction=0.0, low_quality_fraction=0.0, seed=0)
    h5ad = write_atlas_h5ad(workdir / "atlas.h5ad", spec, resampled=True)
    columns = {c: c for c in ("dataset", "assay", "cell_type")}
    source = SourceSpec(path=h5ad, dataset="atlas", obs_columns=columns)
    config = PrepareConfig(vocab="corpus", stats_groups=["dataset", "assay"],
                           qc=QCConfig(min_genes=0, min_counts=0, max_mito_fraction=None))
    return prepare([source], workdir / "atlas.zarr", config, progress=False).store.path


def model_only_tokens_per_s(cfg: RunConfig, steps: int) -> float:
    """The bare training step on pre-built batches: the ceiling for the end-to-end loop."""
    from sc_fm.data import build_train_loader, open_stores
    from sc_fm.model import MaskedGeneTransformer
    from sc_fm.tokenize import CellTokenizer
    from sc_fm.train.engines import build_optimizer

    tokenizer = CellTokenizer.from_stores(cfg.tokenizer, open_stores(cfg.data.stores))
    accumulation = cfg.train.global_batch_cells // cfg.train.micro_batch_cells
    loader = build_train_loader(cfg, tokenizer)
    batches = [next(loader) for _ in range(accumulation * (steps + WARMUP_STEPS))]
    torch.manual_seed(cfg.train.seed)
    model = MaskedGeneTransformer(cfg.model, **tokenizer.model_inputs)
    optimizer = build_optimizer(model, cfg.train, torch.device("cpu"))
    tokens = 0
    for step in range(steps + WARMUP_STEPS):
        if step == WARMUP_STEPS:
            tokens, began = 0, time.perf_counter()
        for batch in batches[step * accumulation:(step + 1) * accumulation]:
            (model(batch)["loss"] / accumulation).backward()
            tokens += int(batch["gene_ids"].numel())
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return tokens / (time.perf_counter() - began)


def end_to_end_tokens_per_s(cfg: RunConfig, run_dir: Path) -> float:
    """Steady-state tokens/s of a real ``pretrain`` run, from its per-step records."""
    from sc_fm.train import METRICS_FILE, pretrain

    pretrain(cfg, run_dir)
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    steady = records[WARMUP_STEPS:]
    seconds = [cfg.train.global_batch_cells / r["cells_per_s"] for r in steady]
    tokens = [r["tokens_per_s"] * s for r, s in zip(steady, seconds)]
    return sum(tokens) / sum(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, 2,000 cells, 15 steps (< ~2 min)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per method (default 60, quick 15)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args()
    steps = args.steps or (15 if args.quick else 60)
    run = "tiny" if args.quick else "small"
    n_cells = 2000 if args.quick else 20000

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        store = build_store(workdir, n_cells, n_genes=2000)
        print(f"simulated store of {n_cells:,} cells in {time.perf_counter() - began:.0f} s", flush=True)
        overrides = [f"data.stores=[{store}]", f"train.max_steps={steps + WARMUP_STEPS}",
                     "data.num_workers=1", f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}"]
        if run == "small":
            overrides += ["tokenizer.max_len=512", "train.micro_batch_cells=32",
                          "train.global_batch_cells=64"]
        cfg_path = CONFIGS_DIR / "runs" / f"{run}.yaml"
        cfg = load_config(cfg_path, overrides)
        print(f"{run} model, {cfg.train.global_batch_cells} cells/step in micro-batches of "
              f"{cfg.train.micro_batch_cells}, max_len {cfg.tokenizer.max_len}, {steps} timed steps",
              flush=True)

        model_rates = [model_only_tokens_per_s(cfg, steps)]
        print(f"model only:            {model_rates[0]:,.0f} tokens/s", flush=True)
        e2e = {}
        for engine in ("deepspeed", "plain"):
            cfg = load_config(cfg_path, [*overrides, f"train.engine={engine}"])
            e2e[engine] = end_to_end_tokens_per_s(cfg, workdir / "runs" / engine)
            print(f"pretrain ({engine:9s}):  {e2e[engine]:,.0f} tokens/s", flush=True)
        model_rates.append(model_only_tokens_per_s(cfg, steps))
        model_rate = sum(model_rates) / len(model_rates)
        print(f"model only (again):    {model_rates[1]:,.0f} tokens/s; mean {model_rate:,.0f}", flush=True)

    print(f"result: train_vs_model_tokens_per_s ratio={e2e['deepspeed'] / model_rate:.3f} target={TARGET}")
    print(f"result: train_plain_vs_model_tokens_per_s ratio={e2e['plain'] / model_rate:.3f} target={TARGET}")


if __name__ == "__main__":
    main()
