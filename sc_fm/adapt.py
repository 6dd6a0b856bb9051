"""``scfm adapt``: continue the self-supervised objectives on a user's own cells, no labels.

The fair fight with scVI, which is trained on the evaluation cells themselves. The input's
cells become a small corpus store in the checkpoint's vocabulary (no QC: every cell stays);
its batches (``batch_key``) become the normaliser groups and new condition categories, whose
embedding rows start as ``<unk>``; pretraining then continues from the checkpoint's weights
for ``adapt.steps`` steps with the checkpoint's own settings, plus two objectives that mix the
input's batches in the cell embedding (``batch_objectives``): without them adaptation learnt
the cells but kept their batches apart (docs/evaluate.md). The result is a normal checkpoint
directory (``Pretrained.load``), written beside and swapped in when complete.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from sc_fm.config import (AdaptConfig, ModelConfig, PrepareConfig, QCConfig, RunConfig, load_config,
                          read_yaml, to_dict)
from sc_fm.errors import ConfigError, InputDataError
from sc_fm.outputs import remove_stale_siblings, swap_in, work_dir
from sc_fm.pretrained import Pretrained
from sc_fm.pretrained.axes import EmbeddingAxes
from sc_fm.pretrained.inputs import require_counts, require_obs_column, stored_values
from sc_fm.rundir import METRICS_FILE
from sc_fm.store import CorpusStore
from sc_fm.tokenize.normalisers import is_group_normalised

ADAPT_FILE = "adapt.json"
INPUT_DATASET = "adapted_input"


def check_input(pretrained: Pretrained, adata, config: AdaptConfig, where: str, settings: Path | None) -> None:
    """Everything that can be refused before any work: batches, genes, counts, enough cells."""
    require_obs_column(adata, config.input.batch_key, "--batch-key", where)
    pretrained.gene_mapping(adata, config.input, where)
    try:
        require_counts(stored_values(adata.X), where)
    except InputDataError as err:
        raise InputDataError(f"{err.what}; adaptation continues the count-based pretraining objectives",
                             where, "pass raw counts in .X (e.g. adata.X = adata.layers['counts'])") from err
    from sc_fm.train.distributed import accumulation_steps
    from sc_fm.train.plan import check_step_memory

    inherited = run_config(pretrained, config, [], settings, n_cells=adata.n_obs)
    check_step_memory(inherited, accumulation_steps(inherited.train, 1))
    minimum = inherited.train.micro_batch_cells
    if adata.n_obs < minimum:
        raise InputDataError(f"only {adata.n_obs} cells; one adaptation step takes {minimum} "
                             f"(train.micro_batch_cells of the checkpoint)", where,
                             f"adapt on at least {minimum} cells, or pass train.micro_batch_cells=N "
                             f"and train.global_batch_cells=N with a smaller N")


MIXING_BANK = 4096  # cells remembered for the neighbour search: the input's, up to this many
ADVERSARY_LR_SCALE = 10  # a classifier slower than the encoder is fooled, not confused (docs/evaluate.md)


def batch_objectives(config: AdaptConfig, n_cells: int) -> list[str]:
    """The model settings that make adaptation mix the input's batches (``AdaptConfig``)."""
    settings = [f"model.cell_mixing_weight={config.mixing_weight}",
                f"model.cell_mixing_bank={max(min(MIXING_BANK, n_cells), ModelConfig.cell_mixing_k)}"]
    if config.adversary_weight > 0:
        settings += [f"model.cell_adversary_weight={config.adversary_weight}",
                     "model.cell_adversary=confusion", f"model.cell_adversary_lr_scale={ADVERSARY_LR_SCALE}"]
    return settings


def run_config(pretrained: Pretrained, config: AdaptConfig, stores: list[str], settings: Path | None,
               overrides: list[str] = (), *, n_cells: int) -> RunConfig:
    """The run settings (``settings``: a checkpoint's config.yaml; None: defaults), pointed at the
    input's store (``n_cells`` cells) for ``config.steps`` steps, with the checkpoint's tokenizer
    and model and the batch objectives."""
    base = ["tracking.enabled=false", "train.eval_every=0", "data.include={}", "data.exclude={}",
            "data.num_workers=0", "train.engine=plain", *batch_objectives(config, n_cells)]
    fixed = [f"data.stores=[{','.join(stores)}]", f"train.max_steps={config.steps}",
                f"train.checkpoint_every={config.steps}", "train.keep_last=1", f"train.seed={config.seed}"]
    if config.lr is not None:  # before the user's overrides, so a train.lr=... among them wins
        base.append(f"train.lr={config.lr}")
    saved = read_yaml(settings) if settings is not None else {}
    # the checkpoint's own model and tokenizer, under the user's overrides (loss weights, say)
    saved.update(model=to_dict(pretrained.model.config), tokenizer=to_dict(pretrained.tokenizer.config))
    cfg = load_config(None, [*base, *overrides, *fixed], base=saved)
    cfg.train.warmup_steps = min(cfg.train.warmup_steps, max(config.steps // 10, 1))
    return cfg


def write_input_store(pretrained: Pretrained, adata, batch_key: str | None, path: Path,
                      min_gene_overlap: float) -> Path:
    """The input's cells as a corpus store: batches as the normaliser group and every condition."""
    from data_pipelines import SourceSpec, prepare

    tokenizer = pretrained.tokenizer
    vocab = path.parent / "vocab.tsv"
    tokenizer.vocab.save(vocab)
    columns = {}
    if batch_key is not None:
        columns = {key: batch_key for key in tokenizer.config.condition_keys}
        if is_group_normalised(tokenizer.config.stats_group):
            columns[tokenizer.config.stats_group] = batch_key
    groups = [tokenizer.config.stats_group] if is_group_normalised(tokenizer.config.stats_group) else []
    no_qc = QCConfig(min_genes=0, min_counts=0, max_mito_fraction=None, drop_duplicate_barcodes=False)
    prepare([SourceSpec(adata=adata, dataset=INPUT_DATASET, obs_columns=columns)], path,
            PrepareConfig(vocab=str(vocab), min_gene_overlap=min_gene_overlap, qc=no_qc, stats_groups=groups),
            progress=False)
    return path


def fit_embedding_axes(checkpoint: Path, adata, config: AdaptConfig) -> None:
    """Save the top ``config.embedding_axes`` principal axes of ``adata``'s pooled states under the
    adapted weights in ``checkpoint`` (the input's cells, as the adaptation saw them)."""
    pooled = Pretrained.load(checkpoint).embed(adata, config.input, key_added=None, progress=False)
    EmbeddingAxes.fit(pooled, config.embedding_axes).save(checkpoint)


def adapt(pretrained: Pretrained, adata, out_dir: str | Path, config: AdaptConfig, overrides: list[str] = (),
          where: str = "input", settings: Path | None = None, overwrite: bool = False) -> Pretrained:
    """Adapt ``pretrained`` to ``adata``'s cells; the checkpoint is written to ``out_dir``.

    ``settings``: the run config to train with (default: the one saved beside the checkpoint;
    a from-scratch control passes its pretrained sibling's, so both train alike)."""
    from sc_fm.train import pretrain

    settings = settings or pretrained.run_config
    check_input(pretrained, adata, config, where, settings)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"{out_dir} already exists", str(out_dir),
                          "choose a new -o DIR, or pass --overwrite to replace it")
    remove_stale_siblings(out_dir)
    work = work_dir(out_dir, "adapt")  # beside the output; a killed run's is removed by the next
    try:
        store = write_input_store(pretrained, adata, config.input.batch_key, work / "cells.zarr",
                                  config.input.min_gene_overlap)
        tokenizer = pretrained.tokenizer.adapted_to([CorpusStore(store)])
        model = copy.deepcopy(pretrained.model)  # the caller's model stays as it was
        model.grow_conditions(tokenizer.model_inputs["condition_sizes"])
        start = None  # the base's untrained start travels on, so that the control stays the same
        if pretrained.has_start:
            start = copy.deepcopy(pretrained.start_model())
            start.grow_conditions(tokenizer.model_inputs["condition_sizes"])
        cfg = run_config(pretrained, config, [str(store)], settings, overrides, n_cells=adata.n_obs)
        final = pretrain(cfg, work / "run", initial=Pretrained(model, tokenizer, start=start))
        if config.embedding_axes:
            fit_embedding_axes(final, adata, config)
        (final / ADAPT_FILE).write_text(json.dumps({
            "base_checkpoint": str(pretrained.path) if pretrained.path else None, "n_cells": int(adata.n_obs),
            "settings": str(settings) if settings else None, "config": to_dict(config)}, indent=2) + "\n")
        shutil.copyfile(work / "run" / METRICS_FILE, final / METRICS_FILE)
        swap_in(final, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Pretrained.load(out_dir)
