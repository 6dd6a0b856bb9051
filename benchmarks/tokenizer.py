"""Single-core tokeniser throughput: ``encode_rows`` + ``mask_and_pack`` on simulated cells.

``python benchmarks/tokenizer.py [--baseline REV]`` simulates 4,096 cells (8,000 genes,
mean depth 8,000: ~1,800 nonzeros per cell, 3 studies), builds per-dataset normalisers with
``GeneStatsAccumulator`` and tokenises 256-cell batches (``max_len`` 1024, training RNG) for
the ``rank`` and ``bin`` schemes. Reports cells per CPU-second (best per batch over
interleaved repeats, so load from other processes distorts it little) and minor page
faults per batch. The process simulates first, so its heap starts large and warm;
``--fresh-heap`` simulates in a child process instead, leaving this one's heap small as in a
new loader worker, where glibc hands freed multi-MB arrays back to the kernel. ``--baseline REV``
also times ``sc_fm/tokenize`` as of git revision ``REV`` in the same run, after checking
that both give identical tokens and batches. Pin one core with ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import importlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sc_fm.config import TokenizerConfig
from sc_fm.vocab import GeneVocab


def simulated_cells(n_cells: int = 4096, n_genes: int = 8000, depth: float = 8000.0) -> dict:
    """Cells and per-dataset normalisers built by the tokenizer's own rule (plain dicts and
    arrays, so a tokenizer of another revision can take them too)."""
    from sc_fm.simulate import AtlasSimulator, AtlasSpec
    from sc_fm.stats import GeneStatsAccumulator
    from sc_fm.tokenize.normalisers import global_medians, medians_by_group

    sim = AtlasSimulator(AtlasSpec(n_cells=n_cells, n_genes=n_genes, mean_depth=depth, seed=0))
    x, obs, _ = next(sim.resampled_blocks(block_cells=n_cells))
    x.sort_indices()
    everything = GeneStatsAccumulator(n_genes)
    everything.update(x.indptr, x.indices, x.data)
    global_median = global_medians(everything.finish())
    by_dataset = medians_by_group([(x, obs["dataset"].to_numpy())], n_genes, global_median,
                                  TokenizerConfig().min_group_cells)
    normalisers = {"global": {"all": global_median}, "dataset": by_dataset}
    return {"x": x, "obs": obs, "vocab": GeneVocab(list(sim.gene_ids)), "normalisers": normalisers}


def load_revision(rev: str, into: Path):
    """``sc_fm/tokenize`` at git ``rev`` as a separate package (``tokenize_<rev>``)."""
    root = Path(__file__).resolve().parents[1]
    name = "tokenize_" + "".join(c if c.isalnum() else "_" for c in rev)
    package = into / name
    package.mkdir(parents=True)
    listing = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:sc_fm/tokenize"], cwd=root,
                             check=True, capture_output=True, text=True).stdout.split()
    for file in listing:
        if file.endswith(".py"):
            text = subprocess.run(["git", "show", f"{rev}:sc_fm/tokenize/{file}"], cwd=root, check=True,
                                  capture_output=True, text=True).stdout
            (package / file).write_text(text.replace("sc_fm.tokenize.", f"{name}."))
    sys.path.insert(0, str(into))
    return importlib.import_module(name)


def tokenizer(module, sim: dict, scheme: str):
    config = TokenizerConfig(scheme=scheme, max_len=1024, stats_group="dataset")
    categories = {k: sorted(sim["obs"][k].unique()) for k in config.condition_keys}
    return module.CellTokenizer(config, sim["vocab"], sim["normalisers"], categories)


def batch(sim: dict, start: int, n: int, keys) -> tuple:
    x = sim["x"][start:start + n]
    obs = sim["obs"].iloc[start:start + n]
    return (x.indptr, x.indices, x.data, {k: obs[k] for k in keys}, obs["dataset"])


def check_identical(a, b, sim: dict, n: int) -> None:
    for start in range(0, sim["x"].shape[0] - n + 1, n):
        args = batch(sim, start, n, a.config.condition_keys)
        for seed in (None, start):
            rngs = [None if seed is None else np.random.default_rng(seed) for _ in range(2)]
            cells = [tok.encode_rows(*args, rng=r) for tok, r in zip((a, b), rngs)]
            for field in ("gene_ids", "values", "offsets", "condition_ids"):
                x, y = (getattr(c, field) for c in cells)
                if x.dtype != y.dtype or not np.array_equal(x, y):
                    raise AssertionError(f"{a.config.scheme}: {field} differs from the baseline")
            packed = [tok.mask_and_pack(c, r, np.arange(n)) for tok, c, r in zip((a, b), cells, rngs)]
            for key in packed[0]:
                x, y = packed[0][key], packed[1][key]
                if key == "max_seqlen" and x != y or key != "max_seqlen" and not (x.dtype == y.dtype
                                                                                   and bool((x == y).all())):
                    raise AssertionError(f"{a.config.scheme}: batch {key} differs from the baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=None, help="git revision to compare against, e.g. 12d594b")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=4, help="timed passes over the 16 batches")
    parser.add_argument("--fresh-heap", action="store_true",
                        help="simulate in a child process: this one's heap stays small, as a new worker's")
    args = parser.parse_args()
    import sc_fm.tokenize as current

    if args.fresh_heap:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            sim = pool.submit(simulated_cells).result()
    else:
        sim = simulated_cells()
    n_cells = sim["x"].shape[0]
    nnz = np.diff(sim["x"].indptr)
    print(f"{n_cells} cells, {nnz.mean():.0f} nonzeros per cell (max {nnz.max()}), batches of {args.batch}")
    with tempfile.TemporaryDirectory() as tmp:
        modules = {"current": current}
        if args.baseline:
            modules[f"baseline {args.baseline}"] = load_revision(args.baseline, Path(tmp))
        for scheme in ("rank", "bin"):
            toks = {name: tokenizer(m, sim, scheme) for name, m in modules.items()}
            if len(toks) > 1:
                check_identical(*toks.values(), sim, args.batch)
            starts = range(0, n_cells - args.batch + 1, args.batch)
            best = {(name, part, s): np.inf for name in toks for part in ("encode", "all") for s in starts}
            faults = dict.fromkeys(toks, 0)
            for repeat in range(args.repeats):
                for s in starts:
                    inputs = batch(sim, s, args.batch, toks["current"].config.condition_keys)
                    for name in (list(toks) if repeat % 2 else list(toks)[::-1]):
                        rng = np.random.default_rng(s)
                        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                        t0 = time.process_time()
                        cells = toks[name].encode_rows(*inputs, rng=rng)
                        t1 = time.process_time()
                        toks[name].mask_and_pack(cells, rng, np.arange(args.batch))
                        t2 = time.process_time()
                        faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
                        best[name, "encode", s] = min(best[name, "encode", s], t1 - t0)
                        best[name, "all", s] = min(best[name, "all", s], t2 - t0)
            for name in toks:
                cells = args.batch * len(starts)
                encode = cells / sum(best[name, "encode", s] for s in starts)
                total = cells / sum(best[name, "all", s] for s in starts)
                print(f"{scheme:4s} {name:16s} encode_rows {encode:8,.0f} cells/s   "
                      f"+ mask_and_pack {total:8,.0f} cells/s   "
                      f"{faults[name] / (args.repeats * len(starts)):6,.0f} page faults/batch")


if __name__ == "__main__":
    main()
