"""Concurrent writers take turns through the store's writer lock; a killed writer's lock is
broken, and what it left behind is reported by `scfm verify` and removed by --repair."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal

import numpy as np
import pytest

from data_pipelines import SourceSpec, prepare
from sc_fm.cli import main
from sc_fm.errors import InputDataError
from sc_fm.store import CorpusStore, StoreWriter
from sc_fm.store.lock import StoreLock, lock_path
from sc_fm.store.verify import repair_store, verify_store
from test_ingest_formats import human_atlas, permissive

FORK = multiprocessing.get_context("fork")


@pytest.fixture(scope="module")
def atlases():
    return [human_atlas(n_cells=n, seed=1) for n in (30, 20, 25)]  # one gene panel: a small vocabulary


@pytest.fixture(scope="module")
def base_store(atlases, tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base.zarr"
    return prepare([SourceSpec(adata=atlases[0], dataset="base")], path, permissive(vocab="corpus"),
                   progress=False).store.path


def _append(adata, dataset, store, lock_timeout, results, inside=None, go_on=None):
    """One writer in a forked process; writer A (``inside`` given) waits inside its critical
    section, after taking the lock and before committing, until B has started."""
    if inside is not None:
        real_commit = StoreWriter.commit

        def held_commit(self, *args, **kwargs):
            inside.set()
            go_on.wait(20)
            import time

            time.sleep(0.3)  # B is now trying to take the lock
            return real_commit(self, *args, **kwargs)

        StoreWriter.commit = held_commit
    try:
        prepare([SourceSpec(adata=adata, dataset=dataset)], store, permissive(), append=True, progress=False,
                lock_timeout=lock_timeout)
        results.put((dataset, 0, ""))
    except InputDataError as err:
        results.put((dataset, 2, err.message))


@pytest.mark.parametrize("trial", range(10))
def test_two_simultaneous_appends(atlases, base_store, tmp_path, trial):
    store = tmp_path / "s.zarr"
    shutil.copytree(base_store, store)
    inside, go_on, results = FORK.Event(), FORK.Event(), FORK.Queue()
    b_timeout = 30.0 if trial % 2 == 0 else 0.05  # B waits for A, or gives up while A holds the lock
    a = FORK.Process(target=_append, args=(atlases[1], "a", store, 30.0, results, inside, go_on))
    a.start()
    assert inside.wait(30)
    go_on.set()
    b = FORK.Process(target=_append, args=(atlases[2], "b", store, b_timeout, results))
    b.start()
    a.join(60)
    b.join(60)
    outcome = {name: (code, message) for name, code, message in (results.get(timeout=5) for _ in range(2))}
    assert outcome["a"][0] == 0
    if b_timeout > 1:
        assert outcome["b"][0] == 0
    else:
        assert outcome["b"][0] == 2 and "another writer holds the store's lock" in outcome["b"][1]
        assert "--lock-timeout" in outcome["b"][1] and f"process {a.pid}" in outcome["b"][1]
    report = verify_store(store)
    assert report.ok, report.text()
    assert report.orphans == []
    done = [name for name, (code, _) in outcome.items() if code == 0]
    sizes = {"a": 20, "b": 25}
    after = CorpusStore(store)
    assert after.n_cells == 30 + sum(sizes[n] for n in done)
    assert sorted(r["dataset"] for r in after.manifest) == sorted(["base", *done])
    assert after.stats("global")["all"].n_cells == after.n_cells
    assert not lock_path(store).exists()


def _die_holding_the_lock(store, adata):
    """Take the lock, stage a shard and the next statistics, then get SIGKILLed."""
    import sc_fm.store.writer as writer_module

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    writer_module._atomic_write_text = killed  # dies writing the manifest, after the statistics
    prepare([SourceSpec(adata=adata, dataset="killed")], store, permissive(), append=True, progress=False)


def test_stale_lock_of_a_killed_writer(atlases, base_store, tmp_path, capfd):
    store = tmp_path / "s.zarr"
    shutil.copytree(base_store, store)
    victim = FORK.Process(target=_die_holding_the_lock, args=(store, atlases[1]))
    victim.start()
    victim.join(60)
    assert victim.exitcode == -signal.SIGKILL
    assert f'"pid": {victim.pid}' in lock_path(store).read_text()
    report = verify_store(store)
    assert report.ok and len(report.orphans) == 2  # its shard and its statistics v2
    assert any("stale" in note for note in report.notes)
    capfd.readouterr()
    prepare([SourceSpec(adata=atlases[2], dataset="next")], store, permissive(), append=True, progress=False,
            lock_timeout=5)
    err = capfd.readouterr().err
    assert f"broke a stale writer lock on {store} (process {victim.pid}" in err
    assert "removed stats/v2" in err
    after = CorpusStore(store)
    assert after.n_cells == 55 and [r["dataset"] for r in after.manifest] == ["base", "next"]
    report = verify_store(store)
    assert report.ok and [p.parent.name for p in report.orphans] == ["shards"]  # the killed writer's shard
    assert main(["verify", str(store), "--repair"]) == 0
    assert verify_store(store).orphans == []
    assert CorpusStore(store).n_cells == 55


def test_live_lock_refuses_after_the_timeout(atlases, base_store, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(base_store, store)
    with StoreLock(store):
        with pytest.raises(InputDataError, match="another writer holds") as err:
            prepare([SourceSpec(adata=atlases[1], dataset="x")], store, permissive(), append=True,
                    progress=False, lock_timeout=0.2)
        assert f"process {os.getpid()}" in err.value.message
        with pytest.raises(InputDataError, match="another writer holds"):
            repair_store(store, lock_timeout=0.1)
    assert CorpusStore(store).n_cells == 30 and not lock_path(store).exists()


def test_verify_reports_damage(base_store, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    shutil.copytree(base_store, store)
    assert main(["verify", str(store)]) == 0
    assert "ok" in capsys.readouterr().out.splitlines()[0]
    shard = CorpusStore(store).shards[0].name
    import zarr

    indptr = zarr.open_array(store / "shards" / shard / "indptr", mode="r+")
    values = indptr[:]
    values[5] = values[7] + 1  # a non-monotone row pointer
    indptr[:] = values
    (store / "shards" / "sdeadbeef-0000-00000").mkdir()
    (store / "manifest-v1.json.tmp-abc123").write_text("")
    assert main(["verify", str(store)]) == 1
    out = capsys.readouterr().out
    assert "problem: shard" in out and "not monotone" in out
    assert "orphan:" in out and "sdeadbeef-0000-00000" in out and "tmp-abc123" in out
    assert "format 2:" in out and "chunk checksums verified" in out  # rewritten through zarr: sound CRCs
    shutil.rmtree(store / "shards" / shard)
    report = verify_store(store)
    assert any("listed in zarr.json but missing" in p for p in report.problems)
    np.testing.assert_equal(len(report.orphans), 2)


def test_partial_folder_of_a_killed_new_store_is_removed_by_the_next_run(atlases, tmp_path, capfd):
    orphan = tmp_path / "new.zarr.partial-deadbeef"
    (orphan / "shards").mkdir(parents=True)
    capfd.readouterr()
    store = prepare([SourceSpec(adata=atlases[0], dataset="d")], tmp_path / "new.zarr", permissive(),
                    progress=False).store
    assert f"removed {orphan}, left by an interrupted" in capfd.readouterr().err
    assert not orphan.exists() and store.n_cells == 30
