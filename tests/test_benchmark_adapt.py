"""``scfm benchmark --adapt-steps N``: zero-shot, untrained, adapted and scratch rows of a checkpoint."""

from __future__ import annotations

import pandas as pd

from sc_fm.cli import main


def test_benchmark_reports_the_controls_and_the_adapted_checkpoint(tiny_checkpoint, tiny_atlas, tmp_path, capsys):
    path = tmp_path / "cells.h5ad"
    tiny_atlas[::4].copy().write_h5ad(path)  # 150 cells of every study
    out = tmp_path / "report"
    assert main(["benchmark", str(path), "--checkpoint", str(tiny_checkpoint), "--batch-key", "dataset",
                 "--label-key", "cell_type", "-o", str(out), "--adapt-steps", "2", "--scvi-epochs", "2",
                 "--no-tracking", "benchmark.scratch_multipliers=[1,2]", "train.warmup_steps=1"]) == 0
    table = pd.read_csv(out / "results.csv", index_col=0)
    expected = {"sc_fm-tiny", "sc_fm-tiny (untrained, same start)", "sc_fm-tiny (untrained, random)",
                "sc_fm-tiny (adapted)", "sc_fm-tiny (scratch, adapted)",
                "sc_fm-tiny (scratch, adapted x2)", "scVI", "Harmony", "PCA (unintegrated)", "Random control"}
    assert set(table.index) == expected
    assert table["Total"].notna().all()
    adapted = sorted(p.name for p in (out / "adapted").iterdir())
    assert adapted == ["sc_fm-tiny_adapted2_seed0", "sc_fm-tiny_scratch2_seed0", "sc_fm-tiny_scratch4_seed0"]
    printed = capsys.readouterr().out
    assert "sc_fm-tiny (adapted) vs scVI" in printed and "sc_fm-tiny (untrained, random) vs Random control" in printed
    assert "sc_fm-tiny: its untrained start scores total" in printed


def test_benchmark_refuses_bad_adaptation_settings_before_any_work(tiny_checkpoint, tiny_atlas, tmp_path, capsys):
    path = tmp_path / "cells.h5ad"
    tiny_atlas[:160].copy().write_h5ad(path)
    assert main(["benchmark", str(path), "--checkpoint", str(tiny_checkpoint), "--label-key", "cell_type",
                 "-o", str(tmp_path / "r"), "--adapt-steps", "-1"]) == 2
    assert "benchmark.adapt_steps must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
