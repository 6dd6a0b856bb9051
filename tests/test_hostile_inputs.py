"""Hostile inputs end to end: outputs that never destroy what exists (a full disk included),
crafted checkpoint directories checked before they are trusted, and each ending in the
one-paragraph error (exit 2) rather than a traceback, a wrong file or a memory blow-up."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import sc_fm.pretrained.h5ad as h5ad
from sc_fm.cli import main
from sc_fm.config import load_config
from sc_fm.errors import InputDataError
from sc_fm.pretrained import Pretrained
from sc_fm.train import pretrain

ROOT = Path(__file__).resolve().parent.parent


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hidden_siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


@pytest.fixture(scope="module")
def cells(tiny_atlas, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "cells.h5ad"
    tiny_atlas[:60].copy().write_h5ad(path)
    return path


@pytest.fixture
def crafted(tiny_checkpoint, tmp_path) -> Path:
    """A copy of a good checkpoint, for a test to damage."""
    path = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, path)
    return path


def embed(checkpoint: Path, cells: Path, out: Path, *more: str) -> int:
    return main(["embed", str(checkpoint), str(cells), "-o", str(out), "--no-progress", *more])


# ---- outputs --------------------------------------------------------------------------
def test_embed_keeps_earlier_outputs_and_the_input_unless_told(tiny_checkpoint, cells, tmp_path, capsys):
    out = tmp_path / "o.h5ad"
    assert embed(tiny_checkpoint, cells, out) == 0
    first = digest(out)
    assert embed(tiny_checkpoint, cells, out) == 2
    assert "already exists" in capsys.readouterr().err and digest(out) == first
    assert embed(tiny_checkpoint, cells, out, "--overwrite") == 0
    own = tmp_path / "own.h5ad"
    shutil.copyfile(cells, own)
    assert embed(tiny_checkpoint, own, own) == 2
    assert "is the input" in capsys.readouterr().err
    assert embed(tiny_checkpoint, own, own, "--overwrite") == 0  # in place, through a sibling
    import anndata

    assert anndata.read_h5ad(own).obsm["X_scfm"].shape[0] == 60 and hidden_siblings(own) == []


@pytest.mark.parametrize("in_place", [False, True])
def test_a_disk_that_fills_during_embed_leaves_every_file_whole(tiny_checkpoint, cells, tmp_path, monkeypatch,
                                                                capsys, in_place):
    """ENOSPC part-way through writing the embedding: exit 2 naming the path, the input and
    any earlier output byte for byte as they were, no partial file."""
    source = tmp_path / "in.h5ad"
    shutil.copyfile(cells, source)
    out = source if in_place else tmp_path / "out.h5ad"
    if not in_place:
        out.write_bytes(b"an earlier output")
    before = {p: digest(p) for p in {source, out}}
    real = h5ad.write_obsm

    def fill_up(path, key, values):
        real(path, key, values[: len(values) // 2])  # half of it lands, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h5ad, "write_obsm", fill_up)
    assert embed(tiny_checkpoint, source, out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and str(out) in err and "Traceback" not in err
    assert {p: digest(p) for p in before} == before and hidden_siblings(out) == []


def test_finetune_never_writes_into_its_input_checkpoint(crafted, cells, capsys):
    weights = digest(crafted / "model.safetensors")
    assert main(["finetune", str(crafted), str(cells), "--label-key", "cell_type", "-o", str(crafted),
                 "--no-tracking"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert main(["finetune", str(crafted), str(cells), "--label-key", "cell_type", "-o",
                 str(crafted / "ft"), "--no-tracking"]) == 2
    assert "inside the input" in capsys.readouterr().err
    assert digest(crafted / "model.safetensors") == weights and not (crafted / "ft").exists()


def test_explain_refuses_an_existing_report_before_computing(tiny_checkpoint, cells, tmp_path, capsys):
    report = tmp_path / "report"
    report.mkdir()
    (report / "notes.md").write_text("mine")
    assert main(["explain", str(tiny_checkpoint), str(cells), "--groupby", "cell_type", "-o", str(report),
                 "--no-tracking", "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err and (report / "notes.md").read_text() == "mine"


def test_pretrain_refuses_a_run_with_final_but_no_checkpoints(tmp_path, tiny_store):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "model.safetensors").write_bytes(b"kept")
    cfg = load_config("tiny", [f"data.stores=[{tiny_store.path}]", "tracking.enabled=false"])
    with pytest.raises(Exception, match=r"already holds a run \(final\).*--resume"):
        pretrain(cfg, run)
    assert (run / "final" / "model.safetensors").read_bytes() == b"kept"


def test_an_input_of_one_gene_is_refused_though_all_of_it_maps(tiny_checkpoint, tiny_atlas, tmp_path, capsys):
    path = tmp_path / "one_gene.h5ad"
    tiny_atlas[:120, :1].copy().write_h5ad(path)
    assert embed(tiny_checkpoint, path, tmp_path / "o.h5ad") == 2
    assert "only 1 of the input's genes are in the checkpoint's vocabulary" in capsys.readouterr().err


# ---- checkpoints checked before they are trusted ---------------------------------------
def _edit_model_config(checkpoint: Path, edit) -> None:
    path = checkpoint / "model_config.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(edit(meta)))


@pytest.mark.parametrize("edit, message", [
    (lambda m: {**m, "config": {**m["config"], "n_layers": 10**9}}, "needs about"),
    (lambda m: {**m, "config": {**m["config"], "d_model": 4194304, "n_heads": 1}}, "needs about"),
    (lambda m: {**m, "config": {**m["config"], "n_layers": -3}}, "n_layers must be at least 1"),
    (lambda m: {**m, "config": {**m["config"], "n_heads": 0}}, "n_heads must be at least 1"),
    (lambda m: {**m, "config": {**m["config"], "dropout": 1.5}}, "dropout must be in"),
    (lambda m: [m], "must be a JSON object"),
    (lambda m: {**m, "condition_sizes": "abc"}, "condition_sizes must be a list"),
    (lambda m: {**m, "n_tokens": -1}, "n_tokens must be"),
    (lambda m: {**m, "config": 5}, "'config' must be a mapping"),
])
def test_a_crafted_model_config_is_refused_before_allocation(crafted, cells, tmp_path, capsys, edit, message):
    _edit_model_config(crafted, edit)
    assert embed(crafted, cells, tmp_path / "o.h5ad") == 2
    err = capsys.readouterr().err
    assert message in err and "model_config.json" in err and not (tmp_path / "o.h5ad").exists()


def test_batch_settings_an_adapt_inherits_are_held_against_memory(crafted, cells, tmp_path, capsys):
    (crafted / "config.yaml").write_text("train:\n  global_batch_cells: 64000000\n  micro_batch_cells: 32\n")
    assert main(["adapt", str(crafted), str(cells), "-o", str(tmp_path / "adapted"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "2,000,000 micro-batches" in err and "train.global_batch_cells" in err
    assert not (tmp_path / "adapted").exists() and hidden_siblings(tmp_path / "adapted") == []


def test_non_finite_weights_are_refused(crafted, cells, tmp_path, capsys):
    weights = load_file(crafted / "model.safetensors")
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, crafted / "model.safetensors")
    assert embed(crafted, cells, tmp_path / "o.h5ad") == 2
    assert "NaN or infinite" in capsys.readouterr().err and not (tmp_path / "o.h5ad").exists()


@pytest.mark.parametrize("fill", [0.0, -1.0, float("nan"), float("inf")])
def test_normalisers_must_be_positive_and_finite(crafted, cells, tmp_path, capsys, fill):
    path = crafted / "tokenizer" / "normalisers.npz"
    with np.load(path) as arrays:
        damaged = {k: np.full_like(v, fill) for k, v in arrays.items()}
    np.savez(path, **damaged)
    assert embed(crafted, cells, tmp_path / "o.h5ad") == 2
    assert "zero, negative or non-finite" in capsys.readouterr().err


def test_a_vocabulary_rotated_under_the_model_is_refused(crafted, cells, tmp_path, capsys):
    """vocab.tsv with its genes rotated by one and tokenizer.json's hash fixed to match: the
    tokenizer is consistent, but the model's rows were trained on the other order."""
    from sc_fm.vocab import GeneVocab

    tok = crafted / "tokenizer"
    lines = (tok / "vocab.tsv").read_text().splitlines()
    head = [line for line in lines if line.startswith("#") or line.startswith("gene_id")]
    genes = [line for line in lines if line not in head]
    (tok / "vocab.tsv").write_text("\n".join([*head, *genes[1:], genes[0]]) + "\n")
    meta = json.loads((tok / "tokenizer.json").read_text())
    meta["vocab_hash"] = GeneVocab.load(tok / "vocab.tsv").hash
    (tok / "tokenizer.json").write_text(json.dumps(meta))
    assert embed(crafted, cells, tmp_path / "o.h5ad") == 2
    assert "the gene rows would mean other genes" in capsys.readouterr().err


def test_condition_vocabs_of_the_wrong_type_are_refused(crafted, cells, tmp_path, capsys):
    path = crafted / "tokenizer" / "tokenizer.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "condition_vocabs": 5}))
    assert embed(crafted, cells, tmp_path / "o.h5ad") == 2
    assert "condition_vocabs must map" in capsys.readouterr().err


def test_a_non_finite_embedding_is_an_error_never_a_file(tiny_checkpoint):
    values = np.ones((4, 3), np.float32)
    values[2, 1] = np.nan
    with pytest.raises(InputDataError, match="1 of 4 cells got a non-finite embedding"):
        h5ad.check_embedding(values, Pretrained.load(tiny_checkpoint), "cells.h5ad")


def test_a_damaged_engine_state_falls_back_to_the_previous_checkpoint(tiny_store, tmp_path, capsys):
    cfg = load_config(ROOT / "configs/runs/tiny.yaml", [
        f"data.stores=[{tiny_store.path}]", "data.num_workers=0", "tokenizer.max_len=32",
        "train.global_batch_cells=16", "train.micro_batch_cells=16", "train.warmup_steps=1",
        "tracking.enabled=false", "train.engine=plain", "train.max_steps=4", "train.checkpoint_every=2",
        "model.gene_init=normal"])
    run = tmp_path / "run"
    pretrain(cfg, run)
    checkpoints = run / "checkpoints"
    (checkpoints / "step_4" / "engine_state.pt").write_bytes(b"\x80\x04not a torch file")
    cfg.train.max_steps = 5
    pretrain(cfg, run, resume=True)
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "step_4" in err and "resuming at step 2" in err
    (checkpoints / "step_5" / "engine_state.pt").write_bytes(b"")
    (checkpoints / "step_4" / "engine_state.pt").write_bytes(b"")
    with pytest.raises(InputDataError, match="no checkpoint in the run directory is complete"):
        pretrain(cfg, run, resume=True)


# ---- inputs ---------------------------------------------------------------------------
def test_a_store_listed_twice_is_refused_under_any_name(tiny_store, tmp_path):
    from sc_fm.data import open_stores
    from sc_fm.errors import ConfigError

    alias = tmp_path / "alias.zarr"
    alias.symlink_to(tiny_store.path)
    for paths in ([str(tiny_store.path)] * 2, [str(tiny_store.path), str(alias)]):
        with pytest.raises(ConfigError, match="listed twice"):
            open_stores(paths)


def test_a_shard_whose_listed_size_understates_its_arrays_stops_training(tiny_store, tmp_path):
    from sc_fm.data import open_stores

    store = tmp_path / "store.zarr"
    shutil.copytree(tiny_store.path, store)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["shards"][0]["n_cells"] -= 10
    meta["attributes"]["n_cells"] -= 10
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(InputDataError, match="holds n_cells=350.*zarr.json lists 340.*scfm verify"):
        open_stores([str(store)])


def test_a_yaml_tag_in_an_override_is_a_clear_error(tmp_path, capsys):
    marker = tmp_path / "ran"
    assert main(["pretrain", "--config", "tiny", "-o", str(tmp_path / "run"),
                 f'train.seed=!!python/object/apply:os.system ["touch {marker}"]']) == 2
    err = capsys.readouterr().err
    assert "not a plain YAML value" in err and "train.seed" in err and not marker.exists()


@pytest.mark.parametrize("override, message", [
    ("model.n_layers=-3", "model.n_layers must be at least 1"), ("model.n_heads=0", "model.n_heads must be"),
    ("model.dropout=1.5", "model.dropout must be in"), ("model.d_model=0", "model.d_model must be"),
    ("model.d_ff=-1", "model.d_ff must be"), ("model.cell_latent=0", "model.cell_latent must be")])
def test_every_model_size_is_range_checked(override, message, tmp_path, capsys):
    assert main(["pretrain", "--config", "tiny", "-o", str(tmp_path / "run"), override]) == 2
    assert message in capsys.readouterr().err


def _without_x(adata, path: Path, keep_counts: bool) -> Path:
    import anndata

    bare = anndata.AnnData(obs=adata.obs.copy(), var=adata.var.copy())
    if keep_counts:
        bare.layers["counts"] = adata.X.copy()
    bare.write_h5ad(path)
    return path


def test_a_file_without_x_reads_its_counts_layer_or_says_what_is_missing(tiny_checkpoint, tiny_atlas, cells,
                                                                         tmp_path, capsys):
    import anndata

    from sc_fm.pretrained.h5ad import read_h5ad

    layered = _without_x(tiny_atlas[:60], tmp_path / "layered.h5ad", keep_counts=True)
    assert embed(tiny_checkpoint, layered, tmp_path / "a.h5ad") == 0
    assert "reading the raw counts from layers['counts']" in capsys.readouterr().err
    assert embed(tiny_checkpoint, cells, tmp_path / "b.h5ad") == 0
    same = [anndata.read_h5ad(tmp_path / f"{n}.h5ad").obsm["X_scfm"] for n in "ab"]
    np.testing.assert_array_equal(*same)
    assert (read_h5ad(layered).X != tiny_atlas[:60].X).nnz == 0
    bare = _without_x(tiny_atlas[:60], tmp_path / "bare.h5ad", keep_counts=False)
    assert embed(tiny_checkpoint, bare, tmp_path / "c.h5ad") == 2
    assert "has no X and no layers['counts']" in capsys.readouterr().err
    with pytest.raises(InputDataError, match="no X and no layers"):
        read_h5ad(bare)


def test_verify_checks_again_when_an_append_lands_during_the_check(tiny_store, tmp_path, monkeypatch):
    """What a concurrent append looks like to a check: the listing changes under it and the
    half-seen state shows as problems. The check is repeated; a store that stays put is not."""
    import sc_fm.store.verify as verify

    store = tmp_path / "store.zarr"
    shutil.copytree(tiny_store.path, store)
    real, calls = verify._verify_once, []

    def racing(path):
        report = real(path)
        calls.append(len(calls))
        if len(calls) == 1:  # an append publishes its listing while this check runs
            meta = json.loads((store / "zarr.json").read_text())
            (store / "zarr.json").write_text(json.dumps(meta, indent=3))
            report.problems.append("shard s-new: listed in zarr.json but missing")
        return report

    monkeypatch.setattr(verify, "_verify_once", racing)
    assert verify.verify_store(store).ok and len(calls) == 2

    def damaged(path):
        report = real(path)
        report.problems.append("a real problem")
        return report

    monkeypatch.setattr(verify, "_verify_once", damaged)
    report = verify.verify_store(store)
    assert report.problems == ["a real problem"]  # the listing did not change: reported at once


def test_a_disk_that_fills_during_a_checkpoint_keeps_the_previous_ones(tiny_store, tmp_path, monkeypatch):
    from sc_fm.errors import OutputError
    from sc_fm.train.engines import PlainEngine

    real, calls = PlainEngine.save_state, []

    def fills_up(self, directory):
        calls.append(directory)
        real(self, directory)
        if len(calls) == 2:  # torch.save on a full disk
            raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing "
                               "file data/12: file write failed")

    monkeypatch.setattr(PlainEngine, "save_state", fills_up)
    cfg = load_config(ROOT / "configs/runs/tiny.yaml", [
        f"data.stores=[{tiny_store.path}]", "data.num_workers=0", "tokenizer.max_len=32",
        "train.global_batch_cells=16", "train.micro_batch_cells=16", "train.warmup_steps=1",
        "tracking.enabled=false", "train.engine=plain", "train.max_steps=4", "train.checkpoint_every=2",
        "model.gene_init=normal"])
    with pytest.raises(OutputError, match="disk is full.*previous checkpoints are intact"):
        pretrain(cfg, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_2"]
