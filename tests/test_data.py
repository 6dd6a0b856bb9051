"""CorpusDataset and TrainBatches: exact sharding, determinism, resume, filters, errors."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from sc_fm.config import DataConfig, RunConfig, TokenizerConfig
from sc_fm.data import CorpusDataset, build_train_loader, open_stores
from sc_fm.data.plan import stratified_order
from sc_fm.errors import ConfigError, InputDataError
from sc_fm.tokenize import CellTokenizer
from sc_fm.vocab import GeneVocab


def small_data(**overrides) -> DataConfig:
    return DataConfig(**{"block_cells": 64, "blocks_per_fetch": 2, "num_workers": 0, **overrides})


def epoch_cells(store, world_size: int, num_workers: int, **data) -> list[list[int]]:
    """Cell indices each rank reads in epoch 0, through a real DataLoader."""
    per_rank = []
    for rank in range(world_size):
        ds = CorpusDataset([store], small_data(**data), ["dataset"], seed=3, rank=rank,
                           world_size=world_size, epochs=1)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers)
        per_rank.append([int(i) for block in loader for i in block.cell_index])
    return per_rank


@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (1, 2), (2, 2), (3, 1), (4, 2)])
def test_epoch_covers_every_cell_exactly_once(tiny_store, world_size, num_workers):
    per_rank = epoch_cells(tiny_store, world_size, num_workers)
    cells = sorted(i for rank in per_rank for i in rank)
    assert cells == list(range(tiny_store.n_cells))
    single = epoch_cells(tiny_store, world_size, 0)
    assert per_rank == single  # worker count does not change the order


def test_order_is_deterministic_and_shuffled(tiny_store):
    a = epoch_cells(tiny_store, 1, 0)[0]
    assert a == epoch_cells(tiny_store, 1, 0)[0]
    ds = CorpusDataset([tiny_store], small_data(), seed=4, epochs=1)
    assert a != [int(i) for block in ds for i in block.cell_index]
    assert a != sorted(a)
    same_seed = CorpusDataset([tiny_store], small_data(), seed=3, epochs=1)
    first_fetch = a[: same_seed.fetches(0)[0].n_cells]
    blocks = {(k, local // 64) for k, local in map(tiny_store.locate, first_fetch)}
    assert len(blocks) == 2  # two whole blocks, mixed together
    assert first_fetch != sorted(first_fetch)


@pytest.mark.parametrize("n_blocks,group", [(10, 3), (11, 3), (12, 4), (5, 8), (1000, 64), (7, 7)])
def test_stratified_groups_take_one_block_of_every_stratum(n_blocks, group):
    order = stratified_order(n_blocks, group, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(n_blocks))
    strata = min(group, n_blocks)
    stratum = np.arange(n_blocks) * strata // n_blocks
    full = n_blocks // strata * strata  # the short group, if any, comes last
    for lo in range(0, full, strata):
        assert sorted(stratum[order[lo: lo + strata]].tolist()) == list(range(strata))
        if strata % 2 == 0:  # dealt to 2 ranks: each gets every other stratum
            assert len(set(stratum[order[lo: lo + strata: 2]] % 2)) == 1
    again = stratified_order(n_blocks, group, np.random.default_rng(0))
    assert np.array_equal(order, again)


def fetch_study_mixtures(store, **data) -> np.ndarray:
    """Per fetch of epoch 0: the fraction of its cells from each study."""
    ds = CorpusDataset([store], small_data(**data), ["dataset"], seed=3, epochs=1)
    studies = sorted(store.categories["dataset"])
    return np.array([[np.mean(block.obs["dataset"] == s) for s in studies] for block in ds])


def test_stratified_fetches_hold_each_study_in_its_corpus_share(tiny_store):
    """The tiny store is sorted by study, as atlases are: a random set of blocks over-represents
    some studies in one fetch; a stratified one holds every study near its corpus share."""
    datasets = tiny_store.obs_values("dataset")
    share = np.array([np.mean(datasets == s) for s in sorted(tiny_store.categories["dataset"])])
    assert np.all(np.diff(tiny_store.obs_codes("dataset")) >= 0)  # stored study by study
    settings = {"block_cells": 25, "blocks_per_fetch": 6}  # 24 blocks, 4 fetches
    distance = {order: 0.5 * np.abs(fetch_study_mixtures(tiny_store, block_order=order, **settings)
                                    - share).sum(axis=1)
                for order in ("stratified", "random")}
    np.testing.assert_allclose(distance["stratified"], 0, atol=1e-12)  # 100-cell strata, 200-cell studies
    assert distance["random"].max() >= 1 / 6  # a whole block's worth off in some fetch


def test_fetch_rows_match_the_store(tiny_store):
    ds = CorpusDataset([tiny_store], small_data(), ["dataset", "assay"], epochs=1)
    block = next(iter(ds))
    datasets = tiny_store.obs_values("dataset")
    for row, cell in enumerate(block.cell_index[:20]):
        k, local = tiny_store.locate(int(cell))
        indptr, indices, data = tiny_store.read_rows(k, local, local + 1)
        np.testing.assert_array_equal(block.counts[row].indices, indices)
        np.testing.assert_array_equal(block.counts[row].data, data)
        assert block.obs["dataset"][row] == datasets[cell]


def test_filters_hold_out_datasets(tiny_store):
    held_out = sorted(tiny_store.categories["dataset"])[0]
    kept = epoch_cells(tiny_store, 2, 0, exclude={"dataset": [held_out]})
    datasets = tiny_store.obs_values("dataset")
    cells = sorted(i for rank in kept for i in rank)
    assert cells == sorted(np.flatnonzero(datasets != held_out).tolist())
    only = epoch_cells(tiny_store, 1, 0, include={"dataset": [held_out]})[0]
    assert sorted(only) == np.flatnonzero(datasets == held_out).tolist()


@pytest.mark.parametrize("filters,match", [
    ({"include": {"tissue": ["x"]}}, "no store has a cell metadata column 'tissue'"),
    ({"exclude": {"dataset": ["study_typo"]}}, "no value 'study_typo'"),
    ({"include": {"dataset": ["study_0"]}, "exclude": {"dataset": ["study_0"]}}, "select no cells"),
])
def test_bad_filters_fail_before_reading(tiny_store, filters, match):
    with pytest.raises(ConfigError, match=match):
        CorpusDataset([tiny_store], small_data(**filters))


def test_too_few_blocks_for_world_size(tiny_store):
    with pytest.raises(ConfigError, match="cannot be shared by 8 ranks"):
        CorpusDataset([tiny_store], small_data(block_cells=512), rank=0, world_size=8)


def run_config(store_path, micro_batch_cells: int = 48) -> RunConfig:
    cfg = RunConfig()
    cfg.data = small_data(stores=[str(store_path)])
    cfg.train.micro_batch_cells = micro_batch_cells
    cfg.train.seed = 5
    return cfg


@pytest.fixture(scope="module")
def tokenizer(tiny_store) -> CellTokenizer:
    return CellTokenizer.from_stores(TokenizerConfig(max_len=64, stats_group="dataset"), [tiny_store])


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def test_batches_have_exact_size_and_roll_over_epochs(tiny_store, tokenizer):
    batches = build_train_loader(run_config(tiny_store.path), tokenizer)
    seen = [next(batches) for _ in range(13)]  # 624 cells: past one epoch of 600
    assert all(len(b["cell_index"]) == 48 and len(b["cu_seqlens"]) == 49 for b in seen)
    first_epoch = torch.cat([b["cell_index"] for b in seen])[:600]
    assert sorted(first_epoch.tolist()) == list(range(600))
    assert batches.state_dict()["epoch"] == 1 and batches.state_dict()["offset"] == 24
    assert all((b["labels"] != -100).any() for b in seen)


def test_resume_mid_epoch_with_other_worker_count(tiny_store, tokenizer):
    cfg = run_config(tiny_store.path)
    cfg.data.num_workers = 2
    reference = build_train_loader(cfg, tokenizer)
    expected = [next(reference) for _ in range(16)]
    first = build_train_loader(cfg, tokenizer)
    for _ in range(5):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))
    cfg.data.num_workers = 0
    resumed = build_train_loader(cfg, tokenizer)
    resumed.load_state_dict(state)
    assert all(same(next(resumed), expected[i]) for i in range(5, 16))


def test_starting_workers_leaves_the_global_rng_alone(tiny_store, tokenizer):
    """A resumed run starts its workers after restoring torch's RNG, which drives dropout and
    the cell decoder's samples: a draw there would make every later step differ."""
    cfg = run_config(tiny_store.path)
    cfg.data.num_workers = 1
    torch.manual_seed(11)
    before = torch.get_rng_state()
    next(build_train_loader(cfg, tokenizer))
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_idle_workers_run_at_idle_priority_and_change_no_batch(tiny_store, tokenizer):
    import psutil

    cfg = run_config(tiny_store.path)
    cfg.data.num_workers = 1
    expected = next(build_train_loader(cfg, tokenizer))
    before = {child.pid for child in psutil.Process().children()}  # other loaders' workers, if alive
    idle = build_train_loader(cfg, tokenizer, idle_workers=True)
    assert same(next(idle), expected)
    workers = [child.pid for child in psutil.Process().children() if child.pid not in before]
    assert len(workers) == 1 and os.sched_getscheduler(workers[0]) == os.SCHED_IDLE
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the training process keeps its priority


def test_batches_are_the_same_through_zarr_reads(tiny_store, tokenizer, monkeypatch):
    """The direct chunk decoder (default for blosc stores) changes no batch."""
    import sc_fm.store.direct

    cfg = run_config(tiny_store.path)
    direct = build_train_loader(cfg, tokenizer)
    expected = [next(direct) for _ in range(14)]  # past an epoch
    assert direct.dataset.stores[0]._slices(0, "indices").directory is not None
    monkeypatch.setattr(sc_fm.store.direct, "_blosc", lambda: None)
    through_zarr = build_train_loader(cfg, tokenizer)
    assert all(same(next(through_zarr), batch) for batch in expected)
    assert through_zarr.dataset.stores[0]._slices(0, "indices").directory is None


def test_small_blocks_of_a_store_read_in_whole_chunks_are_warned_of(tiny_store, monkeypatch):
    import warnings

    import sc_fm.store.direct
    from sc_fm.store import CorpusStore

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CorpusDataset([CorpusStore(tiny_store.path)], small_data(block_cells=16))  # blosc: partial reads
    monkeypatch.setattr(sc_fm.store.direct, "_blosc", lambda: None)
    with pytest.warns(UserWarning, match=r"chunks of about 64 cells .* data.block_cells=64 "
                                         r"data.blocks_per_fetch=2 \(the same shuffle buffer"):
        CorpusDataset([CorpusStore(tiny_store.path)], small_data(block_cells=16, blocks_per_fetch=8))


def test_ranks_split_the_batches(tiny_store, tokenizer):
    cfg = run_config(tiny_store.path, micro_batch_cells=50)
    ranks = [build_train_loader(cfg, tokenizer, rank=r, world_size=2) for r in range(2)]
    cells = [torch.cat([next(r)["cell_index"] for _ in range(5)]) for r in ranks]  # within epoch 0
    assert not set(cells[0].tolist()) & set(cells[1].tolist())
    with pytest.raises(ConfigError, match="world_size"):
        other = build_train_loader(cfg, tokenizer)
        other.load_state_dict(ranks[0].state_dict())


def test_a_loader_state_of_another_block_order_is_refused(tiny_store, tokenizer):
    cfg = run_config(tiny_store.path)
    state = build_train_loader(cfg, tokenizer).state_dict()
    del state["block_order"]  # saved before block orders existed: the random order
    with pytest.raises(ConfigError, match="block_order=random.*data.block_order"):
        build_train_loader(cfg, tokenizer).load_state_dict(state)
    cfg.data.block_order = "random"
    build_train_loader(cfg, tokenizer).load_state_dict(state)


def test_store_errors(tiny_store, tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="data.stores"):
        open_stores([])
    future = tmp_path / "future.zarr"
    shutil.copytree(tiny_store.path, future)
    meta = json.loads((future / "zarr.json").read_text())
    meta["attributes"]["format_version"] = 99
    (future / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(InputDataError, match="format version 99"):
        build_train_loader(run_config(future), tokenizer)
    other_vocab = CellTokenizer(tokenizer.config, GeneVocab([f"ENSG{i:011d}" for i in range(300)]),
                                {"global": {"all": np.ones(300, np.float32)},
                                 "dataset": {}}, tokenizer.condition_vocabs)
    with pytest.raises(InputDataError, match="differs from the tokenizer"):
        build_train_loader(run_config(tiny_store.path), other_vocab)


def test_several_stores_are_numbered_in_order(tiny_store):
    per_rank = [[int(i) for block in CorpusDataset([tiny_store, tiny_store], small_data(), seed=1, rank=r,
                                                   world_size=2, epochs=1) for i in block.cell_index]
                for r in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == list(range(2 * tiny_store.n_cells))


def test_stores_with_different_vocabularies_are_refused(tiny_store, tmp_path):
    from sc_fm.stats import GeneStatsAccumulator
    from sc_fm.store import GLOBAL_GROUP, StoreWriter

    vocab = GeneVocab([f"ENSG{i:011d}" for i in range(5)])
    x = np.ones((2, 5), np.int32)
    acc = GeneStatsAccumulator(5)
    with StoreWriter(tmp_path / "other.zarr", vocab) as writer:
        writer.add_shard(np.array([0, 5, 10]), np.tile(np.arange(5), 2), x.ravel(), {}, {}, "other")
        acc.update(np.array([0, 5, 10]), np.tile(np.arange(5), 2), x.ravel())
        writer.commit({GLOBAL_GROUP: {"all": acc}}, [])
    with pytest.raises(InputDataError, match="vocabulary .* differs"):
        open_stores([str(tiny_store.path), str(tmp_path / "other.zarr")])
