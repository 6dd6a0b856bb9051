"""``scfm prepare`` and ``scfm info``: exit codes, overrides, one-paragraph errors, JSON output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sc_fm import cli
from test_ingest_formats import human_atlas


@pytest.fixture
def scfm(monkeypatch, capsys):
    """Run ``scfm ARGS`` in-process (only this area's subcommands); returns (code, stdout, stderr)."""
    monkeypatch.setattr(cli, "COMMANDS", {name: cli.COMMANDS[name] for name in ("prepare", "info")})

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def h5ad(tmp_path):
    path = tmp_path / "pbmc.h5ad"
    human_atlas(n_cells=60).write_h5ad(path)
    return path


def test_prepare_then_info(scfm, h5ad, tmp_path):
    store = tmp_path / "s.zarr"
    code, out, _ = scfm("prepare", h5ad, "-o", store, "--quiet", "qc.min_genes=1", "prepare.qc.min_counts=1",
                        "qc.max_mito_fraction=null", "shard_cells=25")
    assert code == 0
    assert "pbmc" in out and "60 of 60 cells kept" in out
    code, out, _ = scfm("info", store, "--json")
    info = json.loads(out)
    assert code == 0 and info["n_cells"] == 60 and info["n_shards"] == 3
    assert info["vocab_name"] == "gencode_v44_human" and len(info["vocab_hash"]) == 16
    assert info["sources"][0]["cells_kept"] == 60 and info["qc_drops"] == {}
    code, out, _ = scfm("info", store)
    assert code == 0 and "60 kept of 60 read" in out and info["vocab_hash"] in out


def test_append_from_the_command_line(scfm, h5ad, tmp_path):
    store = tmp_path / "s.zarr"
    lax = ["qc.min_genes=1", "qc.min_counts=1", "qc.max_mito_fraction=null"]
    assert scfm("prepare", h5ad, "-o", store, "--quiet", *lax)[0] == 0
    code, _, err = scfm("prepare", h5ad, "-o", store, "--quiet", "--append", *lax)
    assert code == 2 and "already in the store" in err and "prepare.allow_duplicate_sources=true" in err
    again = ["allow_duplicate_sources=true"]
    assert scfm("prepare", h5ad, "-o", store, "--quiet", "--append", *lax, *again)[0] == 0
    info = json.loads(scfm("info", store, "--json")[1])
    assert info["n_cells"] == 120 and len(info["sources"]) == 2


def test_bad_input_exits_2_with_one_paragraph(scfm, h5ad, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("")
    code, out, err = scfm("prepare", bad, "-o", tmp_path / "s.zarr")
    assert code == 2 and out == ""
    assert err.startswith("scfm prepare: error: ") and str(bad) in err and "Fix:" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.zarr").exists()


def test_bad_override_and_missing_store(scfm, h5ad, tmp_path):
    code, _, err = scfm("prepare", h5ad, "-o", tmp_path / "s.zarr", "codec=gzip9")
    assert code == 2 and "prepare.codec" in err
    code, _, err = scfm("info", tmp_path / "nothing.zarr")
    assert code == 2 and "not a corpus store" in err


def test_config_file_sets_prepare_section(scfm, h5ad, tmp_path):
    config = tmp_path / "prep.yaml"
    config.write_text("prepare:\n  shard_cells: 7\n"
                      "  qc: {min_genes: 1, min_counts: 1, max_mito_fraction: null}\n")
    assert scfm("prepare", h5ad, "-o", tmp_path / "s.zarr", "--config", config, "--quiet")[0] == 0
    info = json.loads(scfm("info", tmp_path / "s.zarr", "--json")[1])
    assert info["n_shards"] == int(np.ceil(60 / 7))
