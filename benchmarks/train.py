"""End-to-end pretraining throughput against the model-only step rate, and the step's MFU.

``pretrain`` (streaming loader + tokenizer + engine + progress + MLflow logging) is timed
against the bare model stepping on batches already in memory (forward + backward + clipping +
AdamW, nothing else): same simulated store, tokenizer, model size, batch and accumulation, in
one process run. The figure is end-to-end tokens/s as a fraction of the model-only rate, so
it says what the data side and the engine cost; the target is 0.9 (the ratio is that
fraction itself, so ``ratio >= target`` is the goal). Both engines are measured: DeepSpeed
ZeRO-2 (the default) and the plain PyTorch loop.

A shared machine drifts by several times within a minute, so one run of each says nothing:
the methods run in turn, round after round (model-only, DeepSpeed, plain, model-only, ...),
each rate is the median over rounds with the spread (min-max over rounds) beside it, and each
end-to-end/model-only ratio is taken within a round, a minute apart, then the median over
rounds: a 1.5x drift of the machine between rounds, seen on the 2-core machine, cancels. Steady state only: the first steps of every run (allocation, DeepSpeed set-up) are left
out. The model-only ceiling is the faster of the bare step with ``pretrain``'s own thread
budget (``sc_fm/threads.py``: every core, the loader workers at idle priority) and with
every core, when the two differ (``OMP_NUM_THREADS`` set).
``train_time_vs_steady`` is steps x the median step time over the run's actual time
(target 1/1.2: no stalls).

MFU: model FLOPs per step (``sc_fm/train/flops.py``, the formula in docs/train.md) over the
model-only step time at ``pretrain``'s thread budget and this machine's measured fp32 matmul
peak at that thread count, for ``tiny`` and ``small``.

    .venv/bin/python benchmarks/train.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import sc_fm  # noqa: F401  (before torch: its OpenMP wait policy, docs/train.md "CPU threads")
import torch

from sc_fm.config import CONFIGS_DIR, PrepareConfig, QCConfig, RunConfig, load_config
from sc_fm.simulate import AtlasSpec, write_atlas_h5ad

WARMUP_STEPS = 3
TARGET = 0.9
STEADY_TARGET = round(1 / 1.2, 2)
# MFU targets on the CPU (docs/train.md says why): the tiny model's 128-wide matmuls and
# vocabulary head cannot fill a core's vector units; small's 256-wide ones come closer.
MFU_TARGETS = {"tiny": 0.15, "small": 0.25}
SIZE_OVERRIDES = {"tiny": [], "small": ["tokenizer.max_len=512", "train.micro_batch_cells=32",
                                        "train.global_batch_cells=64"]}


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


class ModelOnly:
    """The bare training step on pre-built batches: the ceiling for the end-to-end loop."""

    def __init__(self, cfg: RunConfig, steps: int):
        from sc_fm.data import open_stores
        from sc_fm.tokenize import CellTokenizer
        from sc_fm.train.builder import run_loader
        from sc_fm.train.flops import StepFlops

        self.cfg, self.steps = cfg, steps
        stores = open_stores(cfg.data.stores)
        self.tokenizer = CellTokenizer.from_stores(cfg.tokenizer, stores)
        self.accumulation = cfg.train.global_batch_cells // cfg.train.micro_batch_cells
        loader = run_loader(cfg, self.tokenizer, stores)
        self.batches = [next(loader) for _ in range(self.accumulation * (steps + WARMUP_STEPS))]
        timed = self.batches[self.accumulation * WARMUP_STEPS:]
        self.tokens = sum(int(b["gene_ids"].numel()) for b in timed)
        self.flops = StepFlops.of(self._model()).step(timed)

    def _model(self) -> torch.nn.Module:
        from sc_fm.model import MaskedGeneTransformer

        torch.manual_seed(self.cfg.train.seed)
        return MaskedGeneTransformer(self.cfg.model, **self.tokenizer.model_inputs)

    def seconds(self, threads: int) -> float:
        """Wall seconds of the timed steps at ``threads`` intra-op threads (fresh model each time)."""
        from sc_fm.train.engines import build_optimizer

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        model = self._model()
        optimizer = build_optimizer(model, self.cfg.train, torch.device("cpu"))
        for step in range(self.steps + WARMUP_STEPS):
            if step == WARMUP_STEPS:
                began = time.perf_counter()
            for batch in self.batches[step * self.accumulation:(step + 1) * self.accumulation]:
                (model(batch)["loss"] / self.accumulation).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - began
        torch.set_num_threads(previous)
        return elapsed


def end_to_end(cfg: RunConfig, run_dir: Path) -> tuple[float, float]:
    """Steady-state tokens/s of a real ``pretrain`` run, and steps x median step over its time."""
    from sc_fm.train import METRICS_FILE, pretrain

    pretrain(cfg, run_dir)
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    steady = records[WARMUP_STEPS:]
    seconds = [cfg.train.global_batch_cells / r["cells_per_s"] for r in steady]
    tokens = [r["tokens_per_s"] * s for r, s in zip(steady, seconds)]
    return sum(tokens) / sum(seconds), len(seconds) * statistics.median(seconds) / sum(seconds)


def gpu_core_headroom(store: Path, batches: int) -> float:
    """8 CPU cores per GPU over the cores that feed one GPU's ``base`` step (docs/train.md, *What a
    GPU needs from the loader*): the loader's cells per CPU-second at ``base``'s tokenizer
    settings against the cells/s that a GPU of the peak table consumes at the GPU check's MFU
    target, from the FLOPs per cell of those very batches."""
    from gpu import MFU_TARGET  # benchmarks/gpu.py, beside this script
    from memory import tree_cpu_seconds

    from sc_fm.data import open_stores
    from sc_fm.model import MaskedGeneTransformer
    from sc_fm.tokenize import CellTokenizer
    from sc_fm.train.builder import run_loader
    from sc_fm.train.flops import GPU_BF16_PEAKS, StepFlops

    cfg = load_config(CONFIGS_DIR / "runs" / "base.yaml", [f"data.stores=[{store}]", "data.num_workers=1"])
    stores = open_stores(cfg.data.stores)
    tokenizer = CellTokenizer.from_stores(cfg.tokenizer, stores)
    loader = run_loader(cfg, tokenizer, stores)
    for _ in range(3):  # warm-up: the worker's start and first fetch
        next(loader)
    cpu_before = tree_cpu_seconds()
    timed = [next(loader) for _ in range(batches)]
    cpu_seconds = tree_cpu_seconds() - cpu_before
    del loader  # its worker ends with it
    cells = sum(len(b["cu_seqlens"]) - 1 for b in timed)
    with torch.device("meta"):  # the FLOP count needs the shapes only
        model = MaskedGeneTransformer(cfg.model, **tokenizer.model_inputs)
    flops_per_cell = StepFlops.of(model).step(timed) / cells
    per_core = cells / cpu_seconds
    print(f"loader at base's settings (max_len {cfg.tokenizer.max_len}, {cfg.train.micro_batch_cells} cells "
          f"a batch): {per_core:,.0f} cells per CPU-second ({cells:,} cells, {cpu_seconds:.2f} CPU-s); "
          f"base: {flops_per_cell / 1e9:,.1f} GFLOP per cell (training, {sum(int(b['gene_ids'].numel()) for b in timed) / cells:,.0f} tokens)")
    headroom = {}
    for name, peak in GPU_BF16_PEAKS:
        consumed = peak * MFU_TARGET / flops_per_cell
        headroom[name] = 8 / (consumed / per_core)
        print(f"  {name:<9} {peak / 1e12:>5,.0f} TFLOP/s x MFU {MFU_TARGET} -> {consumed:>7,.0f} cells/s: "
              f"{consumed / per_core:5.2f} cores to feed it, headroom {headroom[name]:.2f} (8 cores per GPU)")
    return headroom["H100"]


def summary(values: list[float], unit: str = "tokens/s") -> str:
    return (f"median {statistics.median(values):,.0f} {unit} (spread {min(values):,.0f}-{max(values):,.0f} "
            f"over {len(values)} rounds)")


def mfu(size: str, bench: ModelOnly, rounds: int, threads: int) -> float:
    """Median MFU over rounds of the model-only step at ``threads`` (pretrain's budget)."""
    from sc_fm.train.flops import measure_cpu_peak

    times = [bench.seconds(threads) for _ in range(rounds)]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    peak = measure_cpu_peak(repeats=50)  # about 1 s: a quiet moment on a shared machine
    torch.set_num_threads(previous)
    values = [bench.flops / t / peak for t in times]
    value = statistics.median(values)
    print(f"{size}: {bench.flops / statistics.median(times) / 1e9:,.1f} GFLOP/s model-only at {threads} "
          f"thread(s), measured peak {peak / 1e9:,.1f} GFLOP/s (fp32 matmul): MFU {value:.3f} "
          f"(spread {min(values):.3f}-{max(values):.3f})", flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny model end to end, 2,000 cells, 12 steps x 3 rounds (a few minutes)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 40, quick 12)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of every method (default 5, quick 3)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args()
    steps = args.steps or (12 if args.quick else 40)
    rounds = args.rounds or (3 if args.quick else 5)
    run = "tiny" if args.quick else "small"
    n_cells = 2000 if args.quick else 20000
    from sc_fm.threads import ThreadPlan

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        store = build_store(workdir, n_cells, n_genes=2000)
        print(f"simulated store of {n_cells:,} cells in {time.perf_counter() - began:.0f} s", flush=True)
        base = [f"data.stores=[{store}]", f"train.max_steps={steps + WARMUP_STEPS}", "data.num_workers=1",
                f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}"]
        cfg_of = {size: load_config(CONFIGS_DIR / "runs" / "tiny.yaml",
                                    [*base, f"model.size={size}", *SIZE_OVERRIDES[size]])
                  for size in MFU_TARGETS}
        cfg = cfg_of[run]
        plan = ThreadPlan.here()
        budget, cores = plan.threads, plan.cores
        threads = sorted({budget, cores})
        print(f"{run} model end to end, {cfg.train.global_batch_cells} cells/step in micro-batches of "
              f"{cfg.train.micro_batch_cells}, max_len {cfg.tokenizer.max_len}, {steps} timed steps, "
              f"{rounds} rounds; pretrain's thread budget {budget} of {cores} cores", flush=True)

        bench = ModelOnly(cfg, steps)
        rates: dict[str, list[float]] = {"model": [], "deepspeed": [], "plain": []}
        model_by_threads: dict[int, list[float]] = {n: [] for n in threads}
        steadiness: list[float] = []
        for r in range(rounds):
            for n in threads:
                model_by_threads[n].append(bench.tokens / bench.seconds(n))
            for engine in ("deepspeed", "plain"):
                overrides = [*base, f"model.size={run}", *SIZE_OVERRIDES[run], f"train.engine={engine}"]
                run_cfg = load_config(CONFIGS_DIR / "runs" / "tiny.yaml", overrides)
                rate, steady = end_to_end(run_cfg, workdir / "runs" / f"{engine}_{r}")
                rates[engine].append(rate)
                if engine == "deepspeed":
                    steadiness.append(steady)
            models = ", ".join(f"{model_by_threads[n][-1]:,.0f} ({n} thr)" for n in threads)
            print(f"round {r + 1}: model-only {models}; deepspeed {rates['deepspeed'][-1]:,.0f}; "
                  f"plain {rates['plain'][-1]:,.0f} tokens/s", flush=True)
        best_threads = max(threads, key=lambda n: statistics.median(model_by_threads[n]))
        rates["model"] = model_by_threads[best_threads]
        for n in threads:
            print(f"model only ({n} thread(s)): {summary(model_by_threads[n])}")
        for engine in ("deepspeed", "plain"):
            print(f"pretrain ({engine}): {summary(rates[engine])}")
        print(f"deepspeed steps x median step / actual time: median {statistics.median(steadiness):.3f} "
              f"(spread {min(steadiness):.3f}-{max(steadiness):.3f})")

        headroom = gpu_core_headroom(store, batches=300 if args.quick else 1000)
        mfus = {}
        for size, size_cfg in cfg_of.items():
            size_bench = bench if size == run else ModelOnly(size_cfg, max(steps // 2, 4))
            mfus[size] = mfu(size, size_bench, rounds, budget)

    for name, engine in (("train", "deepspeed"), ("train_plain", "plain")):
        ratios = [e / m for e, m in zip(rates[engine], rates["model"])]
        print(f"{engine} / model-only within each round: {', '.join(f'{r:.3f}' for r in ratios)}")
        print(f"result: {name}_vs_model_tokens_per_s ratio={statistics.median(ratios):.3f} target={TARGET}")
    print(f"result: train_time_vs_steady ratio={statistics.median(steadiness):.3f} target={STEADY_TARGET}")
    for size, value in mfus.items():
        print(f"result: mfu_{size}_cpu ratio={value:.3f} target={MFU_TARGETS[size]}")
    print(f"result: loader_gpu_core_headroom ratio={headroom:.2f} target=1.0")


if __name__ == "__main__":
    main()
