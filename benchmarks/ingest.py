"""Ingestion throughput and memory: ``scfm prepare`` vs anndata's ``read_h5ad`` + ``write_zarr``.

One simulated atlas (20,000 genes, ~2,000 nonzeros per cell, several studies) is written as
h5ad, then converted to a Zarr store by:

1. sc_fm ``prepare`` (QC, gene mapping to a corpus vocabulary, sharding, statistics, manifest),
   with 1 worker and with 2 worker processes;
2. anndata: ``read_h5ad`` (whole matrix into memory) + ``write_zarr`` (default compression).

Each runs in its own subprocess; peak RSS is the summed RSS of that process tree, and CPU
seconds (user + system, workers included) are reported beside wall time because on a shared
machine wall time depends on what else runs. A second
atlas 10x smaller checks that sc_fm's peak memory is bounded by its block/shard size rather
than the atlas. Finally codec x chunk-size choices are compared on the small atlas (store
size, write time, whole-chunk decode speed through ``CorpusStore.read_rows``). Ends with
``result: NAME ratio=X target=Y`` lines (ratio > 1: sc_fm is better).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memory import PeakRSS, tree_cpu_seconds  # benchmarks/memory.py, beside this script


GENES = 20_000
MEAN_DEPTH = 9_000.0  # ~2,000 nonzero genes per cell after the simulator's thinning
CODECS = ("blosc-lz4-bitshuffle", "blosc-zstd", "zstd")
CHUNKS = (256, 1024, 4096)


def _own_peak_rss() -> int:
    """This process's RSS high-water mark (``VmHWM``; unlike ``ru_maxrss`` not inherited over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_one(method: str, source: Path, output: Path, workers: int, shard_cells: int) -> dict:
    """One conversion in this process (called in a fresh subprocess): seconds and peak RSS."""
    with PeakRSS() as rss:
        began = time.perf_counter()
        if method == "anndata":
            import anndata

            adata = anndata.read_h5ad(source)
            adata.write_zarr(output)
            n_cells = adata.n_obs
        else:
            from data_pipelines import prepare
            from sc_fm.config import PrepareConfig, QCConfig

            config = PrepareConfig(vocab="corpus", workers=workers, shard_cells=shard_cells,
                                   qc=QCConfig(min_genes=0, min_counts=0, max_mito_fraction=None))
            n_cells = prepare([source], output, config, progress=False).cells_read
        seconds = time.perf_counter() - began
    return {"seconds": seconds, "cells": n_cells, "peak_rss": max(rss.peak, _own_peak_rss()),
            "cpu": tree_cpu_seconds()}


def measure(method: str, source: Path, workdir: Path, workers: int = 1, shard_cells: int = 65536) -> dict:
    """Run one conversion in a subprocess: seconds, CPU seconds of its process tree, peak RSS."""
    output = workdir / f"{method}-{workers}-{source.stem}.zarr"
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, __file__, "--run-one", method, str(source), str(output), str(workers),
               str(shard_cells)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["size"] = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    shutil.rmtree(output, ignore_errors=True)
    name = f"{method} ({workers} worker{'s' if workers > 1 else ''})" if method == "sc_fm" else method
    print(f"{name:<18} {source.name:<11} {result['cells'] / result['seconds']:>7,.0f} cells/s "
          f"{result['seconds']:>6.1f} s  {result['cells'] / result['cpu']:>7,.0f} cells/CPU-s  "
          f"peak RSS {result['peak_rss'] / 2**30:5.2f} GiB  store {result['size'] / 2**20:6.1f} MiB",
          flush=True)
    return result


def codec_table(source: Path, workdir: Path, repeats: int = 3) -> None:
    """Store size, write time and whole-chunk decode speed per codec and chunk size.

    Decode speed is cells per CPU-second (all threads of this process), best of ``repeats``
    interleaved passes, so that other load on the machine does not rank the codecs.
    """
    from data_pipelines import prepare
    from sc_fm.config import PrepareConfig, QCConfig

    stores, rows = {}, {}
    for codec in CODECS:
        for chunk in CHUNKS:
            config = PrepareConfig(vocab="corpus", codec=codec, chunk_cells=chunk,
                                   qc=QCConfig(min_genes=0, min_counts=0, max_mito_fraction=None))
            began = time.perf_counter()
            output = workdir / f"codec-{codec}-{chunk}.zarr"
            store = prepare([source], output, config, progress=False).store
            write_s = time.perf_counter() - began
            size = sum(p.stat().st_size for p in (store.path / "shards").rglob("*") if p.is_file())
            stores[codec, chunk], rows[codec, chunk] = store, [size, write_s, float("inf")]
    for _ in range(repeats):
        for (codec, chunk), store in stores.items():
            began = time.process_time()
            for k, info in enumerate(store.shards):
                for start in range(0, info.n_cells, chunk):
                    store.read_rows(k, start, min(start + chunk, info.n_cells))
            rows[codec, chunk][2] = min(rows[codec, chunk][2], time.process_time() - began)
    print(f"\n{'codec':<22}{'chunk':>6}{'MiB':>8}{'write s':>9}{'read cells/CPU-s':>18}")
    for (codec, chunk), (size, write_s, read_s) in rows.items():
        n_cells = stores[codec, chunk].n_cells
        print(f"{codec:<22}{chunk:>6}{size / 2**20:>8.1f}{write_s:>9.1f}{n_cells / read_s:>18,.0f}")
        shutil.rmtree(stores[codec, chunk].path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5k / 50k cells instead of 20k / 200k")
    parser.add_argument("--workdir", type=Path, help="where atlases and stores go (default: a temp dir)")
    parser.add_argument("--run-one", nargs=5, help=argparse.SUPPRESS,
                        metavar=("METHOD", "SOURCE", "OUTPUT", "WORKERS", "SHARD_CELLS"))
    args = parser.parse_args()
    if args.run_one:
        method, source, output, workers, shard_cells = args.run_one
        print(json.dumps(run_one(method, Path(source), Path(output), int(workers), int(shard_cells))))
        return
    from sc_fm.simulate import AtlasSpec, write_atlas_h5ad

    small_cells = 5_000 if args.quick else 20_000
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scfm-ingest-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    atlases = {}
    for name, n_cells in (("small", small_cells), ("large", 10 * small_cells)):
        began = time.perf_counter()
        atlases[name] = write_atlas_h5ad(workdir / f"{name}.h5ad", AtlasSpec(
            n_cells=n_cells, n_genes=GENES, n_studies=4, mean_depth=MEAN_DEPTH, seed=0), resampled=True)
        size = atlases[name].stat().st_size / 2**20
        print(f"simulated {name} atlas: {n_cells:,} cells x {GENES:,} genes ({size:,.0f} MiB h5ad) "
              f"in {time.perf_counter() - began:.0f} s", flush=True)
    shard_cells = 16_384 if args.quick else 65_536  # the large atlas makes 4 parallel tasks either way
    print(f"prepare.shard_cells={shard_cells:,}; peak RSS = summed over the process tree\n", flush=True)
    peer = measure("anndata", atlases["large"], workdir)
    serial = measure("sc_fm", atlases["large"], workdir, 1, shard_cells)
    parallel = measure("sc_fm", atlases["large"], workdir, 2, shard_cells)
    small = measure("sc_fm", atlases["small"], workdir, 1, shard_cells)
    codec_table(atlases["small"], workdir)
    if args.workdir is None:
        shutil.rmtree(workdir)
    speed = max(serial["cells"] / serial["seconds"], parallel["cells"] / parallel["seconds"])
    growth = serial["peak_rss"] / small["peak_rss"]
    print(f"\nsc_fm peak RSS grows {growth:.2f}x from {small_cells:,} to {10 * small_cells:,} cells; "
          f"anndata holds the whole matrix ({peer['peak_rss'] / 2**30:.2f} GiB)")
    print(f"result: ingest_cells_per_s ratio={speed / (peer['cells'] / peer['seconds']):.2f} target=1.0")
    print(f"result: ingest_cells_per_s_one_worker ratio="
          f"{(serial['cells'] / serial['seconds']) / (peer['cells'] / peer['seconds']):.2f} target=1.0")
    print(f"result: ingest_cells_per_cpu_s ratio={peer['cpu'] / serial['cpu']:.2f} target=1.0")
    print(f"result: ingest_peak_rss ratio={peer['peak_rss'] / serial['peak_rss']:.2f} target=1.0")
    print(f"result: ingest_rss_10x_growth ratio={1.5 / growth:.2f} target=1.0")


if __name__ == "__main__":
    main()
