"""SIGTERM during `scfm prepare` (what SLURM sends at a time limit) cleans up like SIGINT:
the staging folder (or an append's new shards) removed, the writer lock released, nothing
visible, and a re-run succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sc_fm.simulate import AtlasSpec, write_atlas_h5ad
from sc_fm.store import CorpusStore
from sc_fm.store.lock import lock_path

ARGS = ["--quiet", "vocab=corpus", "read_block_cells=128", "shard_cells=4000", "qc.min_genes=0",
        "qc.min_counts=0", "qc.max_mito_fraction=null"]


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> Path:
    """Large enough that an ingest takes a few seconds here (many small read blocks)."""
    return write_atlas_h5ad(tmp_path_factory.mktemp("sig") / "atlas.h5ad",
                            AtlasSpec(n_cells=40_000, n_genes=1000), resampled=True)


def prepare(atlas: Path, store: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sc_fm.cli", "prepare", str(atlas), "-o", str(store),
                             *ARGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def terminate_mid_ingest(process: subprocess.Popen, staging: Path, shards_before: set[str]) -> str:
    """Send SIGTERM once a new shard chunk is on disk; returns stderr."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        written = [p for p in (staging / "shards").glob("*/indices/c/*") if p.parts[-4] not in shards_before]
        if written:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the ingest finished before it could be interrupted"
    os.kill(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_a_new_store(atlas, tmp_path, workers):
    store = tmp_path / "corpus.zarr"
    process = prepare(atlas, store, f"workers={workers}")
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("corpus.zarr.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    staging = next(tmp_path.glob("corpus.zarr.partial-*"))
    terminate_mid_ingest(process, staging, set())
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no staging folder, no lock
    rerun = prepare(atlas, store)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "removed" not in err  # nothing was left for the re-run to clean
    assert CorpusStore(store).n_cells > 0 and not lock_path(store).exists()


def test_sigterm_during_an_append(atlas, tmp_path):
    store = tmp_path / "corpus.zarr"
    first = prepare(atlas, store, "allow_duplicate_sources=true")
    assert first.wait(timeout=300) == 0
    before = CorpusStore(store)
    shards = {p.name for p in (store / "shards").iterdir()}
    process = prepare(atlas, store, "--append", "allow_duplicate_sources=true")
    terminate_mid_ingest(process, store, shards)
    assert {p.name for p in (store / "shards").iterdir()} == shards
    assert not lock_path(store).exists() and not list(tmp_path.glob("*.partial-*"))
    after = CorpusStore(store)
    assert (after.n_cells, after.stats_version) == (before.n_cells, before.stats_version)
    rerun = prepare(atlas, store, "--append", "allow_duplicate_sources=true")
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert CorpusStore(store).n_cells == 2 * before.n_cells
