"""Reading rows and metadata: the direct chunk decoder returns exactly what zarr returns."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import sc_fm.store.direct
from sc_fm.stats import GeneStatsAccumulator
from sc_fm.store import CorpusStore, SliceReader, StoreWriter
from sc_fm.vocab import GeneVocab


def write_store(path, codec: str, format_version: int | None = None) -> tuple[CorpusStore, sp.csr_matrix]:
    """One shard of 400 cells in chunks of ~16 cells; the counts of the first 60 cells are all
    zero, so in format 1 zarr leaves those ``data`` chunks out (it stores no all-fill-value
    chunk); format 2 writes every chunk."""
    rng = np.random.default_rng(0)
    x = sp.random(400, 50, density=0.3, format="csr", random_state=2,
                  data_rvs=lambda n: rng.integers(1, 30, n).astype(np.int32))
    x.data[: x.indptr[60]] = 0
    vocab = GeneVocab([f"ENSG{i:011d}" for i in range(50)])
    datasets = np.array([f"d{i % 3}" if i % 7 else None for i in range(400)], dtype=object)
    acc = GeneStatsAccumulator(50)
    with StoreWriter(path, vocab, codec=codec, chunk_cells=16, format_version=format_version) as writer:
        writer.add_shard(x.indptr, x.indices, x.data, {"dataset": datasets}, {}, "s")
        writer.commit({"global": {"all": acc}}, [])
    return CorpusStore(path), x


@pytest.mark.parametrize("format_version", [1, 2])
@pytest.mark.parametrize("codec,direct", [("blosc-lz4-bitshuffle", True), ("blosc-zstd", True),
                                          ("zstd", False)])
def test_rows_equal_zarr_slices(tmp_path, codec, direct, format_version):
    store, x = write_store(tmp_path / "s.zarr", codec, format_version)
    assert store.format_version == format_version
    group = store.shard(0)
    zero_chunk = tmp_path / "s.zarr" / "shards" / store.shards[0].name / "data" / "c" / "0"
    assert zero_chunk.exists() == (format_version == 2)
    rng = np.random.default_rng(1)
    ranges = [(0, 400), (0, 1), (399, 400), (5, 5), (10, 74), (60, 61)]
    ranges += [tuple(sorted(rng.integers(0, 401, 2).tolist())) for _ in range(40)]
    for start, stop in ranges:
        indptr, indices, data = store.read_rows(0, start, stop)
        lo, hi = x.indptr[start], x.indptr[stop]
        np.testing.assert_array_equal(indptr, x.indptr[start: stop + 1] - lo)
        np.testing.assert_array_equal(indices, x.indices[lo:hi])
        np.testing.assert_array_equal(data, x.data[lo:hi])
        assert indices.dtype == group["indices"].dtype and data.dtype == group["data"].dtype
        np.testing.assert_array_equal(data, group["data"][lo:hi])
    assert (SliceReader(store.shard(0)["indices"]).directory is not None) == direct


def test_without_c_blosc_reads_go_through_zarr(tmp_path, monkeypatch):
    monkeypatch.setattr(sc_fm.store.direct, "_blosc", lambda: None)
    store, x = write_store(tmp_path / "s.zarr", "blosc-lz4-bitshuffle")
    indptr, indices, data = store.read_rows(0, 30, 250)
    assert SliceReader(store.shard(0)["data"]).directory is None
    np.testing.assert_array_equal(indices, x.indices[x.indptr[30]: x.indptr[250]])
    np.testing.assert_array_equal(data, x.data[x.indptr[30]: x.indptr[250]])


def test_shard_obs_matches_obs_values(tmp_path):
    store, _ = write_store(tmp_path / "s.zarr", "blosc-lz4-bitshuffle")
    values = store.obs_values("dataset")
    codes, categories = store.shard_obs(0, "dataset", 33, 301)
    assert list(np.array(categories + [None], dtype=object)[codes]) == list(values[33:301])
    assert store.shard_obs(0, "tissue", 0, 10) is None


@pytest.mark.parametrize("format_version,match", [(1, "does not decode"), (2, "fails its checksum")])
def test_damaged_chunk_is_an_input_error(tmp_path, format_version, match):
    store, _ = write_store(tmp_path / "s.zarr", "blosc-lz4-bitshuffle", format_version)
    chunk = tmp_path / "s.zarr" / "shards" / store.shards[0].name / "indices" / "c" / "3"
    chunk.write_bytes(chunk.read_bytes()[:40])
    with pytest.raises(sc_fm.store.InputDataError, match=match):
        CorpusStore(tmp_path / "s.zarr").read_rows(0, 0, 400)


def test_partial_reads_of_a_verified_chunk_read_only_the_blosc_blocks_they_need(tmp_path, monkeypatch):
    """Once a process has read a chunk whole and its checksum held, a read of a few rows of it
    reads only the header, the block offsets and the blosc blocks holding them; a chunk file
    changed since is read whole again, so damage done after the first read is still caught."""
    import os
    import struct

    from sc_fm.errors import InputDataError

    rng = np.random.default_rng(0)
    x = sp.random(2048, 1000, density=0.5, format="csr", random_state=3,
                  data_rvs=lambda n: rng.integers(1, 30, n).astype(np.int32))
    vocab = GeneVocab([f"ENSG{i:011d}" for i in range(1000)])
    with StoreWriter(tmp_path / "s.zarr", vocab, chunk_cells=2048) as writer:
        writer.add_shard(x.indptr, x.indices, x.data, {}, {}, "s")
        writer.commit({"global": {"all": GeneStatsAccumulator(1000)}}, [])
    store = CorpusStore(tmp_path / "s.zarr")
    chunk = tmp_path / "s.zarr" / "shards" / store.shards[0].name / "indices" / "c" / "0"
    nbytes, blocksize, cbytes = struct.unpack_from("<iii", chunk.read_bytes(), 4)
    assert nbytes > 6 * blocksize  # several blosc blocks per chunk
    data_chunk = chunk.parent.parent.parent / "data" / "c" / "0"
    smaller = min(cbytes, struct.unpack_from("<iii", data_chunk.read_bytes(), 4)[2])

    whole, part_bytes = [], []
    frames, preadv = sc_fm.store.direct.SliceReader._frames, os.preadv
    monkeypatch.setattr(sc_fm.store.direct.SliceReader, "_frames",
                        lambda self, chunks: whole.append((self.name, list(chunks))) or frames(self, chunks))
    monkeypatch.setattr(os, "preadv", lambda fd, buffers, offset: part_bytes.append(len(buffers[0]))
                        or preadv(fd, buffers, offset))

    def check(start: int, stop: int) -> None:
        indptr, indices, data = store.read_rows(0, start, stop)
        lo, hi = x.indptr[start], x.indptr[stop]
        np.testing.assert_array_equal(indices, x.indices[lo:hi])
        np.testing.assert_array_equal(data, x.data[lo:hi])

    check(100, 164)  # the first read of chunk 0 of indices/data: whole, verified
    assert ("indices", [0]) in whole and ("data", [0]) in whole
    whole.clear()
    for start in (0, 90, 500, 1200, 1980):
        check(start, start + 64)
    assert not [name for name, _ in whole if name in ("indices", "data")]
    assert part_bytes and max(part_bytes) < smaller / 2  # at most two of eight blosc blocks

    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x5A
    chunk.write_bytes(bytes(raw))
    os.utime(chunk, ns=(os.stat(chunk).st_atime_ns, os.stat(chunk).st_mtime_ns + 10**9))
    with pytest.raises(InputDataError, match="fails its checksum"):
        store.read_rows(0, 300, 364)
