"""Loader throughput from object storage, and against TileDB-SOMA's own PyTorch loader.

One simulated atlas (as in ``loader.py``: several studies, ~2k nonzeros per cell) is ingested
once into an sc_fm corpus store on local disk, copied to an S3 bucket on an S3 server on
127.0.0.1 (moto's standalone server, started here as a separate, detached process so that its
CPU time is not the loader's), and written once as a local TileDB-SOMA experiment
(``tiledbsoma.io.from_anndata``). Every method then delivers packed, masked batches of
``--batch`` cells with the same ``CellTokenizer`` and ``--workers`` DataLoader workers:

1. ``local``: sc_fm's ``CorpusDataset`` + ``TrainBatches`` over the store on local disk;
2. ``s3_cold``: the same over ``s3://``, no chunk cache (every block downloads its chunks);
3. ``s3_warm``: the same with ``SCFM_CHUNK_CACHE`` filled by one earlier pass (a second epoch);
4. ``soma_ml``: ``tiledbsoma_ml.ExperimentDataset`` (its default IO batch and shuffle chunk) over
   the SOMA experiment, each mini-batch tokenised in its worker (``spawn``, as it requires;
   persistent workers, so they start once, not every epoch).

The figure that counts is tokenised cells per loader-CPU-second: CPU time of the benchmark
process and its loader workers only (the S3 server is not their child), which load from
others on a shared machine cannot distort. Cells/s by wall clock is printed too (best of
interleaved rounds). Ends with ``result: NAME ratio=X target=Y`` lines.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import psutil
import scipy.sparse as sp
import torch

from sc_fm.config import TokenizerConfig
from sc_fm.store import CorpusStore
from sc_fm.tokenize import CellTokenizer

from loader import OBS_COLUMNS, Measured, Tokenise, best_run, build_inputs, endless, measure, sc_fm_batches
from peers import require_peers

METHODS = ("local", "s3_cold", "s3_warm", "soma_ml")
ATLAS = (8000, 5, 8000.0)  # genes, studies, mean counts per cell
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def s3_server(logfile: Path) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto S3 server in a detached process (re-parented away
    from this one, so ``tree_cpu_seconds`` does not count it); stopped on exit."""
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = Path(sys.executable).with_name("moto_server")
    launched = subprocess.run(["sh", "-c", f"'{server}' -H 127.0.0.1 -p {port} >'{logfile}' 2>&1 & echo $!"],
                              capture_output=True, text=True, check=True)
    pid = int(launched.stdout.strip())
    try:
        for _ in range(300):
            with closing(socket.socket()) as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the S3 server did not start: {logfile.read_text()[-2000:]}")
        assert pid not in {p.pid for p in psutil.Process().children(recursive=True)}
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(pid, signal.SIGTERM)


def upload(store: CorpusStore, url: str) -> CorpusStore:
    """A copy of a local store published at ``url`` the way ``scfm prepare`` publishes (root last)."""
    import shutil

    from sc_fm.store.location import filesystem
    from sc_fm.store.publish import write_remote

    fs, key = filesystem(url)
    fs.mkdir(key.split("/", 1)[0])
    write_remote(url, False, None, lambda staging: shutil.copytree(store.path, staging), progress=False)
    return CorpusStore(url)


def fill_cache(store: CorpusStore, columns: list[str]) -> None:
    """Read every shard chunk once (what a first epoch does), so the cache holds them all."""
    for k, info in enumerate(store.shards):
        store.read_rows(k, 0, info.n_cells)
        for column in columns:
            store.shard_obs(k, column, 0, info.n_cells)


class TokenisedSoma(torch.utils.data.IterableDataset):
    """``tiledbsoma_ml``'s mini-batches (dense X, obs frame), tokenised in the worker."""

    def __init__(self, dataset, tokenise: Tokenise):
        self.dataset, self.tokenise = dataset, tokenise

    def __iter__(self) -> Iterator[dict]:
        for x, obs in self.dataset:
            counts = sp.csr_matrix(x)
            columns = {c: obs[c].to_numpy().astype(object) for c in OBS_COLUMNS}
            yield self.tokenise(counts, columns, obs["soma_joinid"].to_numpy())


def soma_ml_batches(uri: str, tokenise: Tokenise, args) -> Iterator[dict]:
    import tiledbsoma
    from tiledbsoma_ml import ExperimentDataset

    with tiledbsoma.Experiment.open(uri) as experiment, experiment.axis_query("RNA") as query:
        dataset = ExperimentDataset(query, layer_name="counts",
                                    obs_column_names=["soma_joinid", *OBS_COLUMNS], batch_size=args.batch,
                                    shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(TokenisedSoma(dataset, tokenise), batch_size=None,
                                         num_workers=args.workers, multiprocessing_context="spawn",
                                         persistent_workers=True)  # no re-spawn per epoch

    return endless(loader)


def write_soma(h5ad: Path, uri: str) -> None:
    import anndata
    import tiledbsoma.io

    began = time.perf_counter()
    adata = anndata.read_h5ad(h5ad)
    tiledbsoma.io.from_anndata(uri, adata, measurement_name="RNA", X_layer_name="counts")
    print(f"wrote the SOMA experiment in {time.perf_counter() - began:.0f} s", flush=True)


@contextmanager
def chunk_cache(folder: Path | None) -> Iterator[None]:
    """``SCFM_CHUNK_CACHE`` set to ``folder`` (unset for None) while loaders are made and run."""
    before = os.environ.pop("SCFM_CHUNK_CACHE", None)
    if folder is not None:
        os.environ["SCFM_CHUNK_CACHE"] = str(folder)
    try:
        yield
    finally:
        os.environ.pop("SCFM_CHUNK_CACHE", None)
        if before is not None:
            os.environ["SCFM_CHUNK_CACHE"] = before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16,000 cells, short windows (~6 min on 2 shared cores)")
    parser.add_argument("--cells", type=int, default=None, help="default 100,000 (quick: 16,000)")
    parser.add_argument("--batch", type=int, default=256, help="cells per batch")
    parser.add_argument("--workers", type=int, default=2, help="loader workers of every method")
    parser.add_argument("--seconds", type=float, default=None, help="timed window per method and round")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (best kept)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="the methods to measure (default: all)")
    args = parser.parse_args()
    if "soma_ml" in args.methods:
        require_peers("remote.py", "tiledbsoma_ml")
    args.genes, args.studies, args.depth = ATLAS  # loader.py's atlas: ~2k nonzeros per cell
    args.cells = args.cells or (16_000 if args.quick else 100_000)
    args.seconds = args.seconds or (5.0 if args.quick else 30.0)
    args.warmup_s = 6.0 if args.quick else 15.0
    args.min_batches = 3
    args.rounds = args.rounds or 3  # best of 3: the machine may be shared
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp, s3_server(Path(tmp) / "s3.log") as endpoint:
        os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint, AWS_CONFIG_FILE=f"{tmp}/no-aws-config",
                          AWS_SHARED_CREDENTIALS_FILE=f"{tmp}/no-aws-credentials")
        h5ad, local = build_inputs(Path(tmp), args)
        began = time.perf_counter()
        remote = upload(local, "s3://bench/atlas.zarr")
        print(f"uploaded the store to {remote.path} in {time.perf_counter() - began:.0f} s", flush=True)
        soma_uri = f"{tmp}/atlas.soma"
        if "soma_ml" in args.methods:
            write_soma(h5ad, soma_uri)

        tokenizer = CellTokenizer.from_stores(TokenizerConfig(stats_group="dataset", max_len=1024), [local])
        import anndata

        backed = anndata.read_h5ad(h5ad, backed="r")
        tokenise = Tokenise(tokenizer, tokenizer.vocab.lookup(list(backed.var_names)))
        dataset_codes = backed.obs["dataset"].cat.codes.to_numpy()
        backed.file.close()

        cache = Path(tmp) / "chunk-cache"
        with chunk_cache(cache):
            began = time.perf_counter()
            fill_cache(CorpusStore(remote.path), list(OBS_COLUMNS) + ["dataset"])
            print(f"filled the chunk cache in {time.perf_counter() - began:.0f} s", flush=True)
        print(f"atlas: {local.n_cells} cells; batch {args.batch}, workers {args.workers}", flush=True)

        def over(store: CorpusStore, folder: Path | None):
            def make() -> Iterator[dict]:
                with chunk_cache(folder):  # read when the readers are made (workers inherit it)
                    batches = sc_fm_batches(store, tokenizer, args)
                    next(batches)
                    yield from batches
            return make
        methods = {"local": over(local, None), "s3_cold": over(remote, None), "s3_warm": over(remote, cache),
                   "soma_ml": lambda: soma_ml_batches(soma_uri, tokenise, args)}
        runs: dict[str, list[Measured]] = {name: [] for name in args.methods}
        for _ in range(args.rounds):
            for name in args.methods:
                runs[name].append(measure(name, methods[name], dataset_codes, args))
    per_cpu = {name: max(m.cells_per_cpu_s for m in r) for name, r in runs.items()}
    wall = {name: best_run(r).cells_per_s for name, r in runs.items()}
    if "local" not in runs:
        return
    for name, target in (("s3_cold", 0.5), ("s3_warm", 0.9)):
        if name in runs:
            print(f"result: {name}_vs_local_cpu ratio={per_cpu[name] / per_cpu['local']:.2f} target={target}")
    if "soma_ml" in runs:
        print(f"result: loader_vs_soma_ml ratio={wall['local'] / wall['soma_ml']:.2f} target=1.5")
        print(f"result: loader_cpu_vs_soma_ml ratio={per_cpu['local'] / per_cpu['soma_ml']:.2f} target=1.5")


if __name__ == "__main__":
    main()
