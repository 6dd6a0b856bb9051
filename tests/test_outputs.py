"""The output policy: checked before compute, never over what exists unless asked, never into an
input, a checkpoint or a store, published atomically; stale siblings of dead writers removed."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sc_fm.errors import OutputError
from sc_fm.outputs import atomic_dir, atomic_file, check_output, check_run_dir, remove_stale_siblings


def siblings(path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "o.h5ad"
    assert check_output(out, kind="file") == out
    out.write_text("earlier")
    with pytest.raises(OutputError, match="already exists.*--overwrite"):
        check_output(out, kind="file")
    assert check_output(out, kind="file", overwrite=True) == out


def test_wrong_kind_and_unwritable_locations(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a directory"):
        check_output(tmp_path / "d", kind="file", overwrite=True)
    with pytest.raises(OutputError, match="is a file"):
        check_output(tmp_path / "f", kind="dir", overwrite=True)
    with pytest.raises(OutputError, match="not a writable directory"):
        check_output(tmp_path / "f" / "below.h5ad", kind="file")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("running as root: permissions do not stop writes")
    with pytest.raises(OutputError, match="not a writable directory"):
        check_output(locked / "o.h5ad", kind="file")


def test_inputs_are_never_outputs_under_any_name(tmp_path):
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    (checkpoint / "model_config.json").write_text("{}")
    cells = tmp_path / "cells.h5ad"
    cells.write_text("cells")
    (tmp_path / "alias.h5ad").symlink_to(cells)
    (tmp_path / "ck_link").symlink_to(checkpoint)
    inputs = [checkpoint, cells]
    for out, kind in [(tmp_path / "ck_link", "dir"), (checkpoint, "dir"), (tmp_path / "alias.h5ad", "file")]:
        with pytest.raises(OutputError, match="is the input"):
            check_output(out, kind=kind, overwrite=True, inputs=inputs)
    with pytest.raises(OutputError, match="inside the input"):
        check_output(tmp_path / "ck_link" / "sub", kind="dir", inputs=inputs)
    with pytest.raises(OutputError, match="holds the input"):
        check_output(tmp_path, kind="dir", overwrite=True, inputs=inputs)
    # the one input the command may replace, and only when asked
    with pytest.raises(OutputError, match="--overwrite to replace the input"):
        check_output(tmp_path / "alias.h5ad", kind="file", inputs=inputs, replaceable_input=cells)
    assert check_output(tmp_path / "alias.h5ad", kind="file", overwrite=True, inputs=inputs, replaceable_input=cells)


def test_never_inside_a_checkpoint_or_a_store(tmp_path, tiny_store):
    other = tmp_path / "other_ck"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(OutputError, match="inside the checkpoint"):
        check_output(other / "x.h5ad", kind="file")
    with pytest.raises(OutputError, match="inside the corpus store"):
        check_output(tiny_store.path / "x", kind="dir")
    with pytest.raises(OutputError, match="is a corpus store"):
        check_output(tiny_store.path, kind="dir", overwrite=True)


def test_run_dir_with_a_final_or_config_needs_resume(tmp_path):
    for held in ("final", "config.yaml", "checkpoints"):
        run = tmp_path / held.replace(".", "_")
        run.mkdir()
        (run / held).mkdir() if "." not in held else (run / held).write_text("x")
        with pytest.raises(OutputError, match=f"already holds a run \\({held}\\).*--resume"):
            check_run_dir(run, resume=False)
        assert check_run_dir(run, resume=True) == run
    assert check_run_dir(tmp_path / "new", resume=False) == tmp_path / "new"


def _fill_then_fail(path, n: int = 4096):
    with open(path, "wb") as f:
        f.write(b"\0" * n)
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_part_way_leaves_the_old_file_and_no_partial(tmp_path):
    out = tmp_path / "o.h5ad"
    out.write_text("earlier")
    with pytest.raises(OutputError, match="disk is full.*unchanged"):
        with atomic_file(out) as tmp:
            _fill_then_fail(tmp)
    assert out.read_text() == "earlier" and siblings(out) == []
    with atomic_file(out) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new" and siblings(out) == []


def test_a_directory_is_built_beside_and_swapped_in(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "old.csv").write_text("old")
    with pytest.raises(OutputError, match="disk is full"):
        with atomic_dir(out) as work:
            (work / "a.csv").write_text("a")
            _fill_then_fail(work / "b.csv")
    assert sorted(p.name for p in out.iterdir()) == ["old.csv"] and siblings(out) == []
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as work:
            (work / "a.csv").write_text("a")
            raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["old.csv"] and siblings(out) == []
    with atomic_dir(out) as work:
        (work / "new.csv").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.csv"] and siblings(out) == []


def test_siblings_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    out = tmp_path / "ad"
    (tmp_path / f".ad.adapt-{pid}-x1y2").mkdir()
    (tmp_path / f".ad.tmp-{pid}-abc").write_text("partial")
    (tmp_path / f".ad.adapt-{os.getpid()}-live").mkdir()
    (tmp_path / f".other.adapt-{pid}-zz").mkdir()
    removed = remove_stale_siblings(out)
    assert sorted(p.name for p in removed) == [f".ad.adapt-{pid}-x1y2", f".ad.tmp-{pid}-abc"]
    assert siblings(out) == [f".ad.adapt-{os.getpid()}-live"]
    assert (tmp_path / f".other.adapt-{pid}-zz").is_dir()
    # a swap cut short between its two renames: the earlier output is put back
    (tmp_path / f".ad.old-{pid}-q").mkdir()
    remove_stale_siblings(out)
    assert out.is_dir()


def test_broken_pipe_exits_141_quietly(tiny_store):
    process = subprocess.Popen([sys.executable, "-m", "sc_fm", "info", str(tiny_store.path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, err
    assert err == ""


def test_a_killed_remote_writers_staging_folder_is_removed_by_the_next(tmp_path, monkeypatch):
    from sc_fm.store.publish import STAGING_ENV, _staging_folder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    left = tmp_path / f".scfm-stage.stage-{int(dead.stdout)}-abcd"
    (left / "store.zarr").mkdir(parents=True)
    monkeypatch.setenv(STAGING_ENV, str(tmp_path))
    staging = _staging_folder()
    assert not left.exists() and staging.parent == tmp_path and f"-{os.getpid()}-" in staging.name


def test_a_full_disk_during_prepare_is_one_paragraph_and_leaves_no_store(tiny_atlas, tmp_path, monkeypatch,
                                                                        capsys):
    from sc_fm.cli import main
    from sc_fm.store.writer import StoreWriter

    source = tmp_path / "atlas.h5ad"
    tiny_atlas.write_h5ad(source)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(StoreWriter, "register_shard", full)
    out = tmp_path / "corpus.zarr"
    assert main(["prepare", str(source), "-o", str(out), "prepare.vocab=corpus", "prepare.qc.min_genes=0",
                 "prepare.qc.min_counts=0"]) == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and "no store was written" in err and "Traceback" not in err
    assert not out.exists()


def test_a_benchmark_that_fails_part_way_leaves_the_earlier_report(tiny_atlas, tmp_path, monkeypatch):
    import sc_fm.evaluate.benchmark as benchmark
    from sc_fm.cli import main

    cells = tmp_path / "cells.h5ad"
    tiny_atlas[:200].copy().write_h5ad(cells)
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("earlier")

    def fails_part_way(adata, batch_key, label_key, out_dir, *args, **kwargs):
        (Path(out_dir) / "results.csv").write_text("partial")
        raise RuntimeError("killed part-way")

    monkeypatch.setattr(benchmark, "run_benchmark", fails_part_way)
    with pytest.raises(RuntimeError, match="killed part-way"):
        main(["benchmark", str(cells), "--label-key", "cell_type", "-o", str(report), "--overwrite",
              "--no-tracking"])
    assert sorted(p.name for p in report.iterdir()) == ["report.md"] and siblings(report) == []
