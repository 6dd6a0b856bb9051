"""Corpus stores on object storage, against a real S3 server on 127.0.0.1 (``s3_server.py``):
prepare, append, info, the loader and pretraining (a forked loader worker), embed, publication
only when complete, bad bucket / credentials / endpoint, and the local chunk cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_pipelines import SourceSpec, prepare
from s3_server import bucket, new_bucket, s3_env, s3_settings  # noqa: F401 - fixtures
from sc_fm.cli import main
from sc_fm.config import PrepareConfig, QCConfig
from sc_fm.errors import InputDataError
from sc_fm.store import CorpusStore, SliceReader

CONFIG = PrepareConfig(vocab="corpus", shard_cells=350, chunk_cells=64,
                       qc=QCConfig(min_genes=0, min_counts=0, max_mito_fraction=None))
COLUMNS = ("dataset", "assay", "donor", "cell_type")


def source(atlas, name="tiny"):
    return SourceSpec(adata=atlas, dataset=name, obs_columns={c: c for c in COLUMNS})


@pytest.fixture(scope="module")
def remote(tiny_atlas, s3_settings) -> str:
    """The tiny atlas ingested into a bucket (one ingest shared by the module's tests, which
    only read it; the append test works on a server-side copy)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_settings.items():
            patch.setenv(key, value)
        url = f"{new_bucket()}/corpus.zarr"
        prepare([source(tiny_atlas)], url, CONFIG, progress=False)
    return url


def same_cells(a: CorpusStore, b: CorpusStore) -> None:
    assert (a.n_cells, a.vocab_hash, [s.n_cells for s in a.shards]) == (b.n_cells, b.vocab_hash,
                                                                          [s.n_cells for s in b.shards])
    for k, info in enumerate(a.shards):
        for x, y in zip(a.read_rows(k, 0, info.n_cells), b.read_rows(k, 0, info.n_cells)):
            np.testing.assert_array_equal(x, y)
    for column in COLUMNS:
        np.testing.assert_array_equal(a.obs_values(column), b.obs_values(column))
    np.testing.assert_array_equal(a.stats()["all"].nonzero_median, b.stats()["all"].nonzero_median)


def test_prepare_and_info_on_s3_match_a_local_store(remote, tiny_store, s3_env, capsys):
    store = CorpusStore(remote)
    assert store.path == remote and SliceReader(store.shard(0)["data"]).directory.startswith(remote)  # direct decoder
    same_cells(store, tiny_store)
    assert main(["info", remote, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["path"], info["n_cells"], info["format_version"]) == (remote, 600, 2)


def test_append_on_s3_publishes_a_new_version(tiny_atlas, remote, bucket):
    from sc_fm.store.location import filesystem

    fs, key = filesystem(remote)
    url = f"{bucket}/corpus.zarr"
    fs.copy(key, url.split("://")[1], recursive=True)  # server-side: the shared store stays as it is
    extra = tiny_atlas[:100].copy()
    extra.obs_names = [f"x{i}" for i in range(100)]
    extra.X = extra.X * 2  # other content: not the same source twice
    appended = prepare([source(extra, "more")], url, CONFIG, append=True, progress=False).store
    assert appended.n_cells == 700 and appended.stats_version == 2
    assert [row["dataset"] for row in appended.manifest] == ["tiny", "more"]
    names = {k.rsplit("/", 1)[-1] for k in fs.ls(url.split("://")[1])}
    assert "manifest-v1.json" not in names and "manifest-v2.json" in names  # the old version is gone
    assert not fs.exists(url.split("://")[1] + ".lock")
    indptr, indices, data = appended.read_rows(len(appended.shards) - 1, 0, 100)
    x = extra.X.tocsr() if hasattr(extra.X, "tocsr") else extra.X
    assert int(data.sum()) == int(x.sum())
    assert CorpusStore(remote).n_cells == 600


def test_pretrain_from_s3_equals_local_then_embed(tiny_atlas, tiny_store, remote, s3_env, tmp_path):
    from test_train_engine import losses, run_config

    from sc_fm.train import FINAL_DIR, pretrain

    runs = {}
    for name, store in (("local", tiny_store), ("s3", CorpusStore(remote))):
        runs[name] = tmp_path / name
        # one loader worker: a forked process opens its own S3 client
        pretrain(run_config(store, "train.max_steps=3", "train.engine=plain", "data.num_workers=1"),
                 runs[name])
    assert losses(runs["s3"]) == losses(runs["local"])
    assert remote in (runs["s3"] / "config.yaml").read_text()
    adata = tiny_atlas[:40].copy()
    adata.write_h5ad(tmp_path / "cells.h5ad")
    out = tmp_path / "embedded.h5ad"
    assert main(["embed", str(runs["s3"] / FINAL_DIR), str(tmp_path / "cells.h5ad"), "-o", str(out),
                 "--no-progress"]) == 0
    import anndata

    assert anndata.read_h5ad(out).obsm["X_scfm"].shape[0] == 40


def test_a_store_is_not_a_store_until_its_upload_completes(tiny_atlas, bucket, monkeypatch):
    import sc_fm.store.publish as publish

    url = f"{bucket}/corpus.zarr"
    seen = []
    real = publish.remote_call

    def dropped_before_root(fn, where, what, *args, **kwargs):
        if what == "publishing the root zarr.json":  # every other object is uploaded by now
            with pytest.raises(InputDataError, match="is not a corpus store") as err:
                CorpusStore(url)
            seen.append(str(err.value))
            raise InputDataError("connection dropped", url, "run again")
        return real(fn, where, what, *args, **kwargs)

    monkeypatch.setattr(publish, "remote_call", dropped_before_root)
    with pytest.raises(InputDataError, match="connection dropped"):
        prepare([source(tiny_atlas)], url, CONFIG, progress=False)
    assert seen and "until its upload is complete" in seen[0]
    fs, key = publish.filesystem(url)
    assert fs.find(key) and not fs.exists(key + ".lock")  # objects left, but nothing a reader uses
    with pytest.raises(InputDataError, match="is not a corpus store"):
        CorpusStore(url)
    monkeypatch.setattr(publish, "remote_call", real)
    assert prepare([source(tiny_atlas)], url, CONFIG, progress=False).store.n_cells == 600  # a re-run works


def test_bad_bucket_credentials_and_endpoint_are_one_paragraph(tiny_atlas, s3_env, monkeypatch, capsys):
    with pytest.raises(InputDataError, match="bucket 'no-such-bucket' does not exist"):
        prepare([source(tiny_atlas)], "s3://no-such-bucket/c.zarr", CONFIG, progress=False)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert main(["info", "s3://any-bucket/c.zarr"]) != 0
    err = capsys.readouterr().err
    assert "no credentials" in err and "AWS_ACCESS_KEY_ID" in err and "Traceback" not in err
    from s3_server import CREDENTIALS, free_port

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("SCFM_REMOTE_RETRIES", "0")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # nor botocore's own retries
    with pytest.raises(InputDataError, match="failed after 1 attempts.*AWS_ENDPOINT_URL"):
        CorpusStore("s3://any-bucket/c.zarr")


def test_chunk_cache_serves_a_second_pass_and_stays_bounded(remote, s3_env, tmp_path, monkeypatch):
    import sc_fm.store.direct as direct
    from sc_fm.store.cache import ChunkCache, _recent_for

    url = remote
    monkeypatch.setenv("SCFM_CHUNK_CACHE", str(tmp_path / "cache"))
    fetched = []
    real = direct._cat
    monkeypatch.setattr(direct, "_cat", lambda fs, keys: fetched.append(len(keys)) or real(fs, keys))
    passes = []
    for _ in range(2):
        _recent_for.cache_clear()  # the second pass as in a new process: from the disk cache alone
        store = CorpusStore(url)
        passes.append([store.read_rows(k, 0, info.n_cells) for k, info in enumerate(store.shards)])
        fetched.append("end")
    first_end = fetched.index("end")
    assert first_end > 0 and fetched[first_end + 1:] == ["end"]  # the second pass downloads nothing
    for a, b in zip(*passes):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    # a damaged entry is dropped and fetched again, never used
    entry = next(p for p in (tmp_path / "cache").glob("??/*"))
    entry.write_bytes(b"\0" * entry.stat().st_size)
    _recent_for.cache_clear()
    store = CorpusStore(url)
    again = [store.read_rows(k, 0, info.n_cells) for k, info in enumerate(store.shards)]
    for a, b in zip(passes[0], again):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    bounded = ChunkCache(tmp_path / "small", max_bytes=10_000)
    for i in range(40):
        bounded.put(f"s3://b/k{i}", bytes(1000))
    assert bounded.used_bytes() <= 10_000 and bounded.get("s3://b/k39") == bytes(1000)


def test_small_frames_are_fetched_once_per_process(remote, s3_env, monkeypatch):
    import sc_fm.store.direct as direct
    from sc_fm.store.cache import RecentFrames, _recent_for

    fetched = []
    real = direct._cat
    monkeypatch.setattr(direct, "_cat", lambda fs, keys: fetched.extend(keys) or real(fs, keys))
    _recent_for.cache_clear()
    store = CorpusStore(remote)
    store.read_rows(0, 0, 20)
    assert len(fetched) == 3  # one chunk of indptr, indices and data
    again = CorpusStore(remote).read_rows(0, 20, 40)  # the same chunks: from memory
    assert len(fetched) == 3
    fresh = CorpusStore(remote)
    monkeypatch.setattr(direct, "recent_frames", lambda: RecentFrames(0, 0))  # nothing kept
    for x, y in zip(again, fresh.read_rows(0, 20, 40)):
        np.testing.assert_array_equal(x, y)
    assert len(fetched) == 6
    recent = RecentFrames(max_bytes=3000, max_frame=1500)
    recent.put("a", bytes(1000))
    recent.put("big", bytes(2000))  # larger than a frame may be: not kept
    recent.put("b", bytes(1000))
    assert recent.get("a") == bytes(1000) and recent.get("big") is None
    recent.put("c", bytes(1500))  # 3500 bytes: the least recently used ("b") goes
    assert (recent.get("a"), recent.get("b"), recent.get("c")) == (bytes(1000), None, bytes(1500))
