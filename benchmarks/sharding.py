"""Zarr v3's sharding codec vs the store's direct partial blosc decoding, for loader block reads.

One CSR-like array pair (``indices``: ~2k sorted gene positions per cell out of 8,000;
``data``: small integer counts) is written twice on local disk with the store's codecs
(blosc lz4 bitshuffle + crc32c):

1. ``direct``: the store's layout, one chunk per ~1,024 cells, read by ``SliceReader`` (only the
   blosc blocks a range touches are decoded);
2. ``sharded-N``: zarr's ``ShardingCodec`` with one shard per ~1,024 cells and inner chunks of
   ~N cells (each its own blosc frame + crc32c, found through the shard's index), read by zarr.

Each layout then reads the same random loader blocks (``--block`` cells, as ``data.block_cells``)
of both arrays. Printed: cells per CPU-second (the figure a shared machine does not distort),
and the compressed bytes a block read needs from storage (all touched chunks for ``direct``,
the touched inner chunks and the shard index for ``sharded``: what a remote read would fetch;
mean over the blocks read).
Ends with ``result: direct_vs_sharded_N ratio=X target=1.0`` lines (ratio > 1: direct is faster).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from sc_fm.store.direct import SliceReader
from sc_fm.store.layout import array_config, codec_for

NNZ_PER_CELL = 2000
CHUNK_CELLS = 1024


def simulated(n_cells: int, n_genes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    genes = np.sort(np.stack([rng.choice(n_genes, NNZ_PER_CELL, replace=False) for _ in range(n_cells)]),
                    axis=1)
    counts = rng.geometric(0.45, size=n_cells * NNZ_PER_CELL).astype(np.int32)
    return genes.astype(np.int32).ravel(), counts


def write(folder: Path, values: dict[str, np.ndarray], inner_cells: int | None) -> zarr.Group:
    group = zarr.open_group(folder, mode="w")
    chunk = CHUNK_CELLS * NNZ_PER_CELL
    for name, array in values.items():
        if inner_cells is None:
            arr = group.create_array(name, shape=array.shape, dtype=array.dtype, chunks=(chunk,),
                                     compressors=codec_for("blosc-lz4-bitshuffle"), config=array_config(True))
        else:
            arr = group.create_array(name, shape=array.shape, dtype=array.dtype, shards=(chunk,),
                                     chunks=(inner_cells * NNZ_PER_CELL,),
                                     compressors=codec_for("blosc-lz4-bitshuffle"), config=array_config(True))
        arr[:] = array
    return group


def stored_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("c/*") if p.is_file())


def block_bytes(stored: int, n_elements: int, unit: int, lo: int, hi: int, index: int) -> float:
    """Compressed bytes a read of ``[lo, hi)`` needs from ``stored`` bytes of an array: every
    touched unit (a chunk, or an inner chunk) at the mean size of one, plus ``index`` bytes per
    touched shard (its index of inner chunks; 0 for the direct layout)."""
    shard = CHUNK_CELLS * NNZ_PER_CELL
    per_unit = (stored - index * -(-n_elements // shard)) / -(-n_elements // unit)
    return (((hi - 1) // unit - lo // unit + 1) * per_unit
            + index * ((hi - 1) // shard - lo // shard + 1))


def measure(name: str, readers: dict, starts: np.ndarray, block: int) -> float:
    for reader in readers.values():  # warm-up: page cache, zarr's metadata
        reader(0, block * NNZ_PER_CELL)
    began = time.process_time()
    for start in starts:
        lo, hi = int(start) * NNZ_PER_CELL, (int(start) + block) * NNZ_PER_CELL
        for reader in readers.values():
            reader(lo, hi)
    rate = len(starts) * block / (time.process_time() - began)
    print(f"{name:>12}: {rate:9.0f} cells/CPU-s", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8,192 cells, 100 reads (< ~1 min)")
    parser.add_argument("--cells", type=int, default=None, help="default 32,768 (quick: 8,192)")
    parser.add_argument("--block", type=int, default=512, help="cells per read (data.block_cells)")
    parser.add_argument("--inner", type=int, nargs="+", default=[32, 128], help="inner chunk sizes, cells")
    parser.add_argument("--reads", type=int, default=None, help="default 400 (quick: 100)")
    args = parser.parse_args()
    n_cells = args.cells or (8192 if args.quick else 32768)
    n_reads = args.reads or (100 if args.quick else 400)
    values = dict(zip(("indices", "data"), simulated(n_cells, 8000)))
    starts = np.random.default_rng(1).integers(0, n_cells - args.block, n_reads)
    lo, hi = int(starts[0]) * NNZ_PER_CELL, (int(starts[0]) + args.block) * NNZ_PER_CELL
    rates, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        layouts = {"direct": None, **{f"sharded-{n}": n for n in args.inner}}
        for name, inner in layouts.items():
            folder = Path(tmp) / name
            group = write(folder, values, inner)
            if inner is None:
                readers = {k: SliceReader(group[k]) for k in values}
                assert all(r.directory is not None for r in readers.values())  # the direct decoder
                unit, index = CHUNK_CELLS * NNZ_PER_CELL, 0
            else:
                readers = {k: (lambda a: lambda lo, hi: a[lo:hi])(group[k]) for k in values}
                unit = inner * NNZ_PER_CELL
                index = 16 * (CHUNK_CELLS // inner) + 4  # offset + length per inner chunk, crc32c
            for k, reader in readers.items():  # the same values either way
                np.testing.assert_array_equal(reader(lo, hi), values[k][lo:hi])
            rates[name] = measure(name, readers, starts, args.block)
            stored = {k: stored_bytes(folder / k) for k in values}
            sizes[name] = np.mean([sum(block_bytes(stored[k], len(v), unit, int(a) * NNZ_PER_CELL,
                                                   (int(a) + args.block) * NNZ_PER_CELL, index)
                                       for k, v in values.items()) for a in starts])
            print(f"{'':>12}  stored {sum(stored.values()) / n_cells:7.0f} B/cell, "
                  f"a {args.block}-cell block needs {sizes[name] / 1e6:.2f} MB (mean)", flush=True)
    for name in layouts:
        if name != "direct":
            print(f"result: direct_vs_{name.replace('-', '_')} ratio={rates['direct'] / rates[name]:.2f} "
                  f"target=1.0")


if __name__ == "__main__":
    main()
