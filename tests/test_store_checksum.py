"""Store format 2: a crc32c per chunk, verified on every read path; format 1 stores still read.

A few flipped bytes inside a chunk must never read back as wrong numbers: the direct decoder,
the zarr fallback, the training loader and ``scfm verify`` each name the damaged chunk.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

import sc_fm.store.direct
from sc_fm.cli import main
from sc_fm.config import DataConfig, RunConfig, TokenizerConfig
from sc_fm.data import CorpusDataset
from sc_fm.errors import InputDataError
from sc_fm.stats import GeneStatsAccumulator
from sc_fm.store import CorpusStore, SliceReader, StoreWriter
from sc_fm.store.verify import verify_store
from sc_fm.tokenize import CellTokenizer
from sc_fm.train.builder import run_loader

from test_store_read import write_store


def flip(path, n: int = 3) -> None:
    """Flip ``n`` bytes in the middle of a chunk file (past the blosc header, before the CRC)."""
    raw = bytearray(path.read_bytes())
    middle = max(16, len(raw) // 2)
    for i in range(middle, min(middle + n, len(raw) - 4)):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


@pytest.fixture()
def copy(tiny_store, tmp_path) -> CorpusStore:
    path = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store.path, path)
    return CorpusStore(path)


def chunk_file(store: CorpusStore, array: str, j: int = 0, k: int = 0):
    return store.path / "shards" / store.shards[k].name / array / "c" / str(j)


def assert_names_chunk(err: pytest.ExceptionInfo, store: CorpusStore, array: str, j: int = 0) -> None:
    text = str(err.value)
    assert "fails its checksum" in text
    for part in (f"store {store.path}", f"shard {store.shards[0].name}", f"array {array}", f"chunk {j}"):
        assert part in text, (part, text)
    assert text.count("\n") == 0 and "scfm verify" in text


def test_new_stores_are_format_2_with_a_crc_per_chunk(tiny_store):
    assert tiny_store.format_version == 2
    group = tiny_store.shard(0)
    for name in ("indptr", "indices", "data", "obs/dataset", "obs_num/n_counts"):
        assert type(group[name].metadata.codecs[-1]).__name__ == "Crc32cCodec", name
        assert SliceReader(tiny_store.shard(0)[name]).checksum
    assert SliceReader(tiny_store.shard(0)["data"]).directory is not None  # the direct decoder still serves it
    report = verify_store(tiny_store.path)
    assert report.ok and report.n_chunks > 10
    assert "chunk checksums verified" in report.text() and "unchecksummed" not in report.text()
    from data_pipelines.report import describe_store, info_text

    assert "format      2 (a crc32c checksum per chunk" in info_text(describe_store(tiny_store))


@pytest.mark.parametrize("array", ["data", "indices", "indptr"])
@pytest.mark.parametrize("path", ["direct", "zarr"])
def test_flipped_bytes_are_a_clear_error_on_both_read_paths(copy, array, path, monkeypatch):
    flip(chunk_file(copy, array))
    if path == "zarr":
        monkeypatch.setattr(sc_fm.store.direct, "_blosc", lambda: None)
    store = CorpusStore(copy.path)
    with pytest.raises(InputDataError) as err:
        store.read_rows(0, 0, store.shards[0].n_cells)
    assert (SliceReader(store.shard(0)[array]).directory is None) == (path == "zarr")
    assert_names_chunk(err, store, array)
    store.read_rows(1, 0, 10)  # the other shard is sound


@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_loader_refuses_a_damaged_chunk(copy, tiny_store, num_workers):
    flip(chunk_file(copy, "indices"))
    data = DataConfig(block_cells=64, blocks_per_fetch=2, num_workers=num_workers, stores=[str(copy.path)])
    dataset = CorpusDataset([CorpusStore(copy.path)], data, ["dataset"], seed=3, epochs=1)
    with pytest.raises(InputDataError, match="fails its checksum"):
        for _ in dataset:
            pass
    cfg = RunConfig()
    cfg.data = data
    cfg.train.micro_batch_cells = 48
    tokenizer = CellTokenizer.from_stores(TokenizerConfig(max_len=64, stats_group="dataset"), [tiny_store])
    batches = run_loader(cfg, tokenizer)
    with pytest.raises(InputDataError) as err:
        for _ in range(30):  # past one epoch: every block is read
            next(batches)
    assert_names_chunk(err, CorpusStore(copy.path), "indices")


def test_verify_reports_every_damaged_chunk(copy, capsys):
    flip(chunk_file(copy, "data", 0))
    flip(chunk_file(copy, "indptr", 0, k=1))
    report = verify_store(copy.path)
    assert not report.ok
    damaged = [p for p in report.problems if "fails its checksum" in p]
    assert len(damaged) == 2
    assert f"shard {copy.shards[0].name}, array data, chunk 0" in damaged[0]
    assert f"shard {copy.shards[1].name}, array indptr, chunk 0" in damaged[1]
    assert main(["verify", str(copy.path)]) == 1
    out = capsys.readouterr().out
    assert "fails its checksum" in out and f"shard {copy.shards[0].name}, array data, chunk 0" in out


def test_missing_chunk_file_is_an_error_not_zeros(copy):
    chunk_file(copy, "data", 1).unlink()
    with pytest.raises(InputDataError, match="array data, chunk 1 is missing"):
        CorpusStore(copy.path).read_rows(0, 0, copy.shards[0].n_cells)
    assert any("chunk 1 is missing" in p for p in verify_store(copy.path).problems)


def test_damaged_metadata_and_statistics_chunks(copy):
    flip(chunk_file(copy, "obs/dataset"), n=1)
    store = CorpusStore(copy.path)
    with pytest.raises(InputDataError, match="array obs/dataset, chunk 0 .*fails its checksum"):
        store.obs_codes("dataset")
    stats = copy.path / "stats" / f"v{copy.stats_version}" / "global" / "0" / "sum_counts" / "c" / "0"
    flip(stats)
    with pytest.raises(InputDataError, match="sum_counts, chunk 0 .*fails its checksum"):
        store.stats("global")
    assert any("sum_counts, chunk 0" in p for p in verify_store(copy.path).problems)


def test_format_1_store_still_reads_and_is_reported_unchecksummed(tmp_path, capsys):
    store, x = write_store(tmp_path / "old.zarr", "blosc-lz4-bitshuffle", format_version=1)
    assert store.format_version == 1
    assert not any(type(c).__name__ == "Crc32cCodec" for c in store.shard(0)["data"].metadata.codecs)
    indptr, indices, data = store.read_rows(0, 0, 400)
    np.testing.assert_array_equal(indices, x.indices)
    np.testing.assert_array_equal(data, x.data)
    report = verify_store(store.path)  # (write_store records no statistics: verify says so)
    assert report.format_version == 1 and not any("chunk" in p for p in report.problems)
    assert any(n.startswith("unchecksummed (format 1)") for n in report.notes)
    main(["verify", str(store.path)])
    assert "format 1: unchecksummed" in capsys.readouterr().out
    from data_pipelines.report import describe_store, info_text

    assert "format      1 (unchecksummed" in info_text(describe_store(store))
    # appending keeps format 1: its old chunks have no checksums to add
    with StoreWriter(store.path, store.vocab, append=True) as writer:
        writer.add_shard(x.indptr[:11], x.indices[: x.indptr[10]], x.data[: x.indptr[10]], {}, {}, "more")
        writer.commit({"global": {"all": GeneStatsAccumulator(50)}}, [])
    appended = CorpusStore(store.path)
    assert appended.format_version == 1 and len(appended.shards) == 2
    assert not SliceReader(appended.shard(1)["data"]).checksum
    np.testing.assert_array_equal(appended.read_rows(1, 0, 10)[2], x.data[: x.indptr[10]])


def test_merging_a_format_1_part_gives_format_1(tmp_path, tiny_store):
    from data_pipelines.merge import merge_stores

    old, _ = write_store(tmp_path / "old.zarr", "blosc-lz4-bitshuffle", format_version=1)
    new, _ = write_store(tmp_path / "new.zarr", "blosc-lz4-bitshuffle")
    assert new.format_version == 2
    assert merge_stores([new.path], tmp_path / "m2.zarr").store.format_version == 2
    merged = merge_stores([old.path, new.path], tmp_path / "m1.zarr", allow_duplicate_sources=True).store
    assert merged.format_version == 1
    assert [SliceReader(merged.shard(k)["data"]).checksum for k in range(2)] == [False, True]


def test_zarr_itself_verifies_format_2_chunks(copy):
    """Any zarr reader (e.g. over object storage later) checks the same checksums."""
    flip(chunk_file(copy, "data"))
    with pytest.raises(ValueError, match="checksum"):
        zarr.open_array(copy.path / "shards" / copy.shards[0].name / "data", mode="r")[:]
