"""Held-out cells reach neither the tokenizer's normalisers nor its condition categories."""

from __future__ import annotations

import numpy as np

from data_pipelines import SourceSpec, prepare
from sc_fm.config import DataConfig, PrepareConfig, QCConfig, TokenizerConfig
from sc_fm.data import kept_cells
from sc_fm.tokenize import CellTokenizer

COLUMNS = ("dataset", "assay", "donor", "cell_type")


def _store(adata, path):
    config = PrepareConfig(vocab="corpus", shard_cells=250, chunk_cells=64,
                           qc=QCConfig(min_genes=0, min_counts=0, max_mito_fraction=None))
    return prepare([SourceSpec(adata=adata, dataset="tiny", obs_columns={c: c for c in COLUMNS})], path, config,
                   progress=False).store


def test_excluded_dataset_is_invisible_to_the_tokenizer(tiny_atlas, tmp_path):
    held_out = "study_2"
    assert held_out in set(tiny_atlas.obs["dataset"])
    whole = _store(tiny_atlas, tmp_path / "whole.zarr")
    config = TokenizerConfig(stats_group="dataset", condition_keys=["assay", "dataset"])
    kept = kept_cells([whole], DataConfig(exclude={"dataset": [held_out]}), "dataset", config.condition_keys)
    filtered = CellTokenizer.from_stores(config, [whole], kept)
    without = tiny_atlas[tiny_atlas.obs["dataset"] != held_out].copy()
    reference = CellTokenizer.from_stores(config, [_store(without, tmp_path / "without.zarr")])
    assert held_out not in filtered.condition_vocabs["dataset"]
    assert filtered.condition_vocabs == reference.condition_vocabs
    assert sorted(filtered.normalisers["dataset"]) == sorted(reference.normalisers["dataset"])
    for group, by_value in reference.normalisers.items():
        for value, expected in by_value.items():
            np.testing.assert_array_equal(filtered.normalisers[group][value], expected, err_msg=f"{group}/{value}")
    unfiltered = CellTokenizer.from_stores(config, [whole])
    assert held_out in unfiltered.condition_vocabs["dataset"]  # the store's own view includes it
    assert kept_cells([whole], DataConfig(), "dataset", config.condition_keys) is None
