"""Verdict words, seed summaries, the Harmony skip note and early refusals (the two-seed run itself:
``tests/test_evaluate.py``, on the module's benchmark fixture)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sc_fm.config import EvalConfig
from sc_fm.errors import ConfigError, InputDataError
from sc_fm.evaluate import run_benchmark
from sc_fm.evaluate.metrics import BATCH, BIO, TOTAL
from sc_fm.evaluate.report import verdicts
from sc_fm.evaluate.scoring import HARMONY, HARMONY_SKIPPED, RANDOM, SCVI, baseline_methods
from sc_fm.evaluate.seeds import SD_SUFFIX, SEEDS, seed_list, summarise, verdict_word
from sc_fm.simulate import AtlasSpec, simulate_atlas

SMALL_SPEC = AtlasSpec(n_cells=150, n_genes=300, n_studies=2, n_cell_types=3, seed=5, capture_sd=1.0,
                       empty_fraction=0.0, low_quality_fraction=0.0)
FAST = dict(n_hvg=200, n_pcs=10, scvi_latent=10, scvi_epochs=4, scvi_kl_warmup_epochs=2)  # one shape: one JIT


@pytest.fixture(scope="module")
def small_atlas():
    return simulate_atlas(SMALL_SPEC)


def test_without_batch_key_harmony_is_skipped_with_a_note(small_atlas):
    methods = baseline_methods(small_atlas, None, EvalConfig(**FAST))
    assert list(methods.seeded) == [SCVI, RANDOM] and methods.notes == [HARMONY_SKIPPED]


def _table(rows: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """Hand-made summary: name -> (Total, Total sd); bio = total, batch = total / 2."""
    table = pd.DataFrame({BIO: [t for t, _ in rows.values()], BIO + SD_SUFFIX: 0.0,
                          BATCH: [t / 2 for t, _ in rows.values()], BATCH + SD_SUFFIX: 0.0,
                          TOTAL: [t for t, _ in rows.values()],
                           TOTAL + SD_SUFFIX: [s for _, s in rows.values()],
                          SEEDS: 3}, index=list(rows))
    table.index.name = "method"
    return table


def test_verdict_words_use_the_larger_seed_sd():
    assert verdict_word(0.80, 0.70, 0.05) == "beats"
    assert verdict_word(0.72, 0.70, 0.05) == "matches" and verdict_word(0.65, 0.70, 0.05) == "matches"
    assert verdict_word(0.60, 0.70, 0.05) == "trails"
    assert verdict_word(0.70, 0.70, 0.0) == "matches" and verdict_word(0.7001, 0.70, 0.0) == "beats"
    table = _table({"sc_fm-tiny": (0.60, 0.01), SCVI: (0.58, 0.03), HARMONY: (0.50, 0.01),
                    RANDOM: (0.62, 0.01)})
    assert verdicts(table, ["sc_fm-tiny"], (SCVI, HARMONY, RANDOM)) == [
        "sc_fm-tiny vs scVI: total 0.60 vs 0.58, bio +0.02, batch +0.01; matches (spread 0.030 over 3 seeds)",
        "sc_fm-tiny vs Harmony: total 0.60 vs 0.50, bio +0.10, batch +0.05; beats "
        "(spread 0.010 over 3 seeds)",
        "sc_fm-tiny vs Random control: total 0.60 vs 0.62, bio -0.02, batch -0.01; trails "
        "(spread 0.010 over 3 seeds)",
    ]
    one_seed = _table({"sc_fm-tiny": (0.47, np.nan), SCVI: (0.86, np.nan)}).assign(**{SEEDS: 1})
    assert verdicts(one_seed, ["sc_fm-tiny"], (SCVI, HARMONY)) == [
        "sc_fm-tiny vs scVI: total 0.47 vs 0.86, bio -0.39, batch -0.20; trails "
        "(1 seed, spread not measured)"]


def test_summary_sd_is_zero_without_a_seed_and_nan_for_one_seed():
    per_seed = pd.DataFrame({"method": ["a", "b", "c", "c"], "seed": pd.array([None, 0, 0, 1], dtype="Int64"),
                             BIO: [0.5, 0.6, 0.7, 0.9], BATCH: [0.5, 0.6, 0.7, 0.9],
                             TOTAL: [0.5, 0.6, 0.7, 0.9]})
    table = summarise(per_seed, {"b", "c"})
    assert table.loc["a", TOTAL + SD_SUFFIX] == 0 and np.isnan(table.loc["b", TOTAL + SD_SUFFIX])
    assert table.loc["c", TOTAL] == pytest.approx(0.8)
    assert table.loc["c", TOTAL + SD_SUFFIX] == pytest.approx(np.std([0.7, 0.9], ddof=1))


def test_zero_or_negative_seeds_and_one_class_labels_are_refused_early(small_atlas, tmp_path, capsys):
    from sc_fm.cli import main

    with pytest.raises(ConfigError, match="at least 1"):
        seed_list(0, 0)
    with pytest.raises(ConfigError, match="at least 1"):
        run_benchmark(small_atlas, "dataset", "cell_type", tmp_path / "r0", n_seeds=-1)
    path = tmp_path / "cells.h5ad"
    small_atlas.write_h5ad(path)
    args = ["benchmark", str(path), "--label-key", "cell_type", "--seeds", "0", "-o", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--seeds" in err and "at least 1" in err and not (tmp_path / "r").exists()

    one_class = small_atlas.copy()
    one_class.obs["cell_type"] = "T cell"
    with pytest.raises(InputDataError, match=r"\.obs\['cell_type'\] has the single value 'T cell'.*"
                                             r"--label-key"):
        run_benchmark(one_class, "dataset", "cell_type", tmp_path / "r1")
    few = small_atlas[:60].copy()
    with pytest.raises(InputDataError, match="only 60 cells; the benchmark needs at least 100"):
        run_benchmark(few, "dataset", "cell_type", tmp_path / "r2")
    rare = small_atlas.copy()
    rare.obs["cell_type"] = rare.obs["cell_type"].astype(str)
    rare.obs.iloc[0, rare.obs.columns.get_loc("cell_type")] = "singleton"
    with pytest.raises(InputDataError, match="fewer than 2 cells: 'singleton' \\(1\\)"):
        run_benchmark(rare, "dataset", "cell_type", tmp_path / "r3")
    assert not any((tmp_path / f"r{i}").exists() for i in range(4))
