"""Shared fixtures: a small simulated atlas and a corpus store made from it."""

from __future__ import annotations

import os

# One thread count for the whole suite, before torch loads: sc_fm's policy leaves cores that other
# processes keep busy at a run's start, and tests that compare two runs bit for bit need the same
# count in both (tests/test_threads.py checks the policy itself, without this variable).
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))

import pytest  # noqa: E402

from data_pipelines import SourceSpec, prepare  # noqa: E402
from sc_fm.config import PrepareConfig, QCConfig  # noqa: E402
from sc_fm.simulate import AtlasSpec, simulate_atlas  # noqa: E402
from sc_fm.store import CorpusStore  # noqa: E402

TINY_SPEC = AtlasSpec(n_cells=600, n_genes=300, n_studies=3, n_cell_types=4, seed=7,
                      empty_fraction=0.0, low_quality_fraction=0.0)


@pytest.fixture(scope="session")
def tiny_atlas():
    """600 cells x 300 genes, 3 studies with different assays, 4 cell types."""
    return simulate_atlas(TINY_SPEC)


@pytest.fixture(scope="session")
def tiny_store(tiny_atlas, tmp_path_factory) -> CorpusStore:
    """The tiny atlas as a corpus store (2 shards), statistics for global/dataset/assay."""
    columns = ("dataset", "assay", "donor", "cell_type")
    source = SourceSpec(adata=tiny_atlas, dataset="tiny", obs_columns={c: c for c in columns})
    config = PrepareConfig(vocab="corpus", shard_cells=350, chunk_cells=64,
                           qc=QCConfig(min_genes=0, min_counts=0, max_mito_fraction=None))
    path = tmp_path_factory.mktemp("store") / "tiny.zarr"
    return prepare([source], path, config, progress=False).store


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_store, tmp_path_factory):
    """An untrained tiny model saved with the tokenizer of ``tiny_store`` (a pretrained directory),
    its start a differently seeded model (so that the same-start row differs from the checkpoint)."""
    import torch

    from sc_fm.config import load_config
    from sc_fm.model import MaskedGeneTransformer
    from sc_fm.pretrained import Pretrained
    from sc_fm.tokenize import CellTokenizer

    cfg = load_config(overrides=["tokenizer.max_len=64", "model.size=tiny", "model.pooling=mean"])
    tokenizer = CellTokenizer.from_stores(cfg.tokenizer, [tiny_store])
    torch.manual_seed(1)
    start = MaskedGeneTransformer(cfg.model, **tokenizer.model_inputs)
    torch.manual_seed(0)
    model = MaskedGeneTransformer(cfg.model, **tokenizer.model_inputs)
    path = tmp_path_factory.mktemp("checkpoint") / "final"
    Pretrained(model, tokenizer, start=start).save(path)
    return path
