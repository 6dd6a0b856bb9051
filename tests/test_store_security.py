"""Crafted stores: names read from a store stay inside it, and merging never follows links."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from data_pipelines.merge import merge_stores
from sc_fm.errors import InputDataError
from sc_fm.stats import GeneStatsAccumulator
from sc_fm.store import CorpusStore, StoreWriter
from sc_fm.vocab import GeneVocab


def small_store(path: Path, seed: int = 0) -> CorpusStore:
    x = sp.random(30, 20, density=0.3, format="csr", random_state=seed,
                  data_rvs=lambda n: np.random.default_rng(seed).integers(1, 9, n).astype(np.int32))
    vocab = GeneVocab([f"ENSG{i:011d}" for i in range(20)])
    with StoreWriter(path, vocab, chunk_cells=8) as writer:
        writer.add_shard(x.indptr, x.indices, x.data, {"dataset": np.full(30, f"d{seed}", object)}, {},
                         f"d{seed}")
        writer.commit({"global": {"all": GeneStatsAccumulator(20)}}, [])
    return CorpusStore(path)


def edit_attrs(store: Path, edit) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    edit(meta["attributes"])
    (store / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("name", ["../../other.zarr/shards/{other}", "/abs/path", "..", ".hidden",
                                  "a/b", "a\\b", "", 7])
def test_shard_name_outside_the_store_is_refused(tmp_path, name):
    other = small_store(tmp_path / "other.zarr", seed=1)
    victim = tmp_path / "x" / "victim.zarr"
    small_store(victim)
    if isinstance(name, str):
        name = name.format(other=other.shards[0].name)
    edit_attrs(victim, lambda attrs: attrs["shards"][0].update(name=name))
    with pytest.raises(InputDataError, match="not a plain name inside the store") as err:
        CorpusStore(victim)
    assert "zarr.json" in err.value.message and "Fix:" in err.value.message


def test_traversal_would_otherwise_read_the_other_store(tmp_path):
    """The crafted name resolves to a real shard of another store: without the check it reads."""
    other = small_store(tmp_path / "other.zarr", seed=1)
    victim = tmp_path / "x" / "victim.zarr"
    small_store(victim)
    target = victim / "shards" / f"../../../other.zarr/shards/{other.shards[0].name}"
    assert (target / "zarr.json").is_file()
    crafted = f"../../../other.zarr/shards/{other.shards[0].name}"
    edit_attrs(victim, lambda a: a["shards"][0].update(name=crafted))
    with pytest.raises(InputDataError, match="shard 0 name"):
        CorpusStore(victim)


def test_malformed_shard_entry_and_stats_names_are_refused(tmp_path):
    path = tmp_path / "s.zarr"
    small_store(path)
    edit_attrs(path, lambda a: a["shards"][0].update(n_cells="many"))
    with pytest.raises(InputDataError, match="shard entry 0"):
        CorpusStore(path)
    path2 = tmp_path / "t.zarr"
    small_store(path2)
    edit_attrs(path2, lambda a: a["stats_groups"]["global"].update({"../../../x": "all"}))
    with pytest.raises(InputDataError, match="statistics key"):
        CorpusStore(path2).stats("global")


def test_merge_refuses_a_symlink_inside_a_shard(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    part = small_store(tmp_path / "part.zarr")
    os.symlink(secret, part.path / "shards" / part.shards[0].name / "obs" / "leak")
    with pytest.raises(InputDataError, match="symbolic link") as err:
        merge_stores([part.path], tmp_path / "merged.zarr")
    assert "leak" in err.value.message
    assert not (tmp_path / "merged.zarr").exists()
    assert not any(p.name == "leak" for p in tmp_path.rglob("*") if "part.zarr" not in str(p))


def test_merge_refuses_a_symlinked_shard_folder(tmp_path):
    part = small_store(tmp_path / "part.zarr")
    other = small_store(tmp_path / "other.zarr", seed=1)
    shard = part.path / "shards" / part.shards[0].name
    import shutil

    shutil.rmtree(shard)
    os.symlink(other.path / "shards" / other.shards[0].name, shard)
    with pytest.raises(InputDataError, match="symbolic link"):
        merge_stores([part.path], tmp_path / "merged.zarr")
    assert not (tmp_path / "merged.zarr").exists()


def test_merge_of_plain_parts_still_copies_everything(tmp_path):
    parts = [small_store(tmp_path / f"p{i}.zarr", seed=i) for i in range(2)]
    merged = merge_stores([p.path for p in parts], tmp_path / "merged.zarr").store
    assert merged.n_cells == 60
    np.testing.assert_array_equal(merged.read_rows(1, 0, 30)[2], parts[1].read_rows(0, 0, 30)[2])


def test_hand_edited_or_damaged_store_files_are_input_errors(tmp_path):
    path = tmp_path / "s.zarr"
    small_store(path)
    edit_attrs(path, lambda a: a.update(n_cells=31))
    with pytest.raises(InputDataError, match="n_cells is 31 but the listed shards hold 30"):
        CorpusStore(path)
    edit_attrs(path, lambda a: a.update(n_cells=30))
    (path / "manifest-v1.json").write_text("[{")
    with pytest.raises(InputDataError, match="manifest is not valid JSON"):
        CorpusStore(path).manifest
    store = CorpusStore(path)
    import shutil

    shutil.rmtree(path / "shards" / store.shards[0].name)
    with pytest.raises(InputDataError, match="listed in zarr.json but missing"):
        store.read_rows(0, 0, 5)
    (path / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": ')
    with pytest.raises(InputDataError, match="zarr.json cannot be read"):
        CorpusStore(path)
