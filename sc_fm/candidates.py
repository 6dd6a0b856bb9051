"""sc_fm's rows of a benchmark beyond the zero-shot checkpoint: the controls that say what
pretraining bought, and the adaptation that meets scVI on its own ground.

For each checkpoint ``sc_fm-<size>``:
- ``(untrained, random)``: the same architecture and tokenizer at random initialisation
  (a random gene table, not the checkpoint's own start, which is the fixed
  ``(untrained, same start)`` row), zero-shot;
- ``(adapted)``: the checkpoint after ``scfm adapt`` on the benchmark's own cells (no labels),
  embedded through ``Pretrained.embed`` like any checkpoint (so on the principal axes that
  adaptation fitted on those cells, ``adapt.embedding_axes``);
- ``(scratch, adapted)``: the same adaptation from random initialisation, at the same number of
  steps and at multiples of it, so a short schedule cannot flatter pretraining.
Every row depends on a seed, so the benchmark repeats each over its seeds.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sc_fm.adapt import adapt
from sc_fm.config import AdaptConfig, BenchmarkConfig
from sc_fm.evaluate.benchmark import checkpoint_names
from sc_fm.pretrained import Pretrained

SeededRow = Callable[[int], np.ndarray]


def seeded_rows(checkpoints: list[str | Path], adata, config: BenchmarkConfig, work_dir: Path,
                progress: bool = False, where: str = "input") -> dict[str, SeededRow]:
    """``{row name: f(seed) -> embedding}`` for every checkpoint (see the module doc), each meeting
    ``adata`` through ``config.input``; adapted checkpoints are kept under ``work_dir/adapted/``
    for the user to reuse."""
    loaded = [Pretrained.load(path) for path in checkpoints]
    rows: dict[str, SeededRow] = {}
    for name, pretrained in zip(checkpoint_names([p.name for p in loaded], checkpoints), loaded):
        def embed(model: Pretrained) -> np.ndarray:
            return model.embed(adata, config.input, key_added=None, progress=progress, where=where)

        def untrained(seed: int, pretrained=pretrained, embed=embed) -> np.ndarray:
            return embed(pretrained.untrained(seed))

        rows[f"{name} (untrained, random)"] = untrained
        if not config.adapt_steps:
            continue
        slug = name.replace(" ", "_").replace("(", "").replace(")", "")
        settings = pretrained.run_config

        def adapted(seed: int, steps: int, scratch: bool, pretrained=pretrained, embed=embed,
                    slug=slug, settings=settings) -> np.ndarray:
            start = pretrained.untrained(seed) if scratch else pretrained
            kind = f"scratch{steps}" if scratch else f"adapted{steps}"
            out = work_dir / "adapted" / f"{slug}_{kind}_seed{seed}"
            shutil.rmtree(out, ignore_errors=True)  # this benchmark's own output from an earlier run
            model = adapt(start, adata, out, AdaptConfig(input=config.input, steps=steps, seed=seed),
                          where=where, settings=settings)
            return embed(model)

        steps = config.adapt_steps
        rows[f"{name} (adapted)"] = lambda seed, f=adapted, n=steps: f(seed, n, False)
        for multiple in config.scratch_multipliers:
            label = f"{name} (scratch, adapted)" if multiple == 1 else f"{name} (scratch, adapted x{multiple})"
            rows[label] = lambda seed, f=adapted, n=steps * multiple: f(seed, n, True)
    return rows
