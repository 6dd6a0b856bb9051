"""Annotation across chemistries: fine-tuned sc_fm against a logistic regression and scANVI.

On the real PBMC cross-chemistry set (``sc_fm.datasets.load_pbmc_cross_chemistry``: pbmc4k,
10x v2, with the FACS-sorted 2,140, 10x v1), the reference is one chemistry with its labels and
the query is the other, its labels hidden from every method; both directions are run
(``scfm benchmark --task annotation``'s code path). The checkpoint is ``--checkpoint DIR`` or,
by default, one demo-sized pretraining here per seed on the demo corpus, which never holds these
cells (``sc_fm.demo``; ``--quick``: its smoke size). Seed ``s`` fine-tunes (and embeds) with the
checkpoint of seed ``s``: how well a checkpoint fine-tunes varies with its pretraining seed more
than with the fine-tuning's own seed (docs/evaluate.md), so the spread must hold both.

Ends with ``result: NAME ratio=X target=Y`` lines, each the worse of the two directions:
``finetuned_vs_logreg`` (macro-F1 ratio), ``finetuned_vs_scanvi`` (read as "at most 0.01 below"),
``pretrained_vs_start_finetuned`` (fine-tuned from the checkpoint over fine-tuned from its own
untrained start). ``--quick`` prints every line at smoke size (a cell sample, short scVI and
fine-tuning). ``--stimulate-query`` adds a simulated interferon response to the query's counts
(``sc_fm.stimulation``): a resting reference labels stimulated cells, and the lines are named
``stimulated_...``. ``--ablation`` runs fine-tuning variants instead (``ablation_variants``), both
directions, ``--seeds`` fine-tuning seeds each, on one checkpoint (``--checkpoint``, or the
pretraining of the first seed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

QUICK_CELLS_PER_CHEMISTRY = 300
QUICK_FINETUNE_STEPS = 30
QUICK_SCVI_EPOCHS = 20


def sample(adata, batch_key: str, n: int, seed: int = 0):
    """``n`` random cells of each batch (all of a smaller one)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero((adata.obs[batch_key] == b).to_numpy()))[:n]
            for b in adata.obs[batch_key].cat.categories]
    return adata[np.sort(np.concatenate(rows))].copy()


def balanced(adata, batch_key: str, label_key: str, reference: str, seed: int = 0):
    """``adata`` with the reference's classes cut to its smallest class's size (seeded): the
    class-balanced variant of the ablation."""
    import numpy as np

    rng = np.random.default_rng(seed)
    is_reference = (adata.obs[batch_key] == reference).to_numpy()
    labels = adata.obs[label_key].astype(str).to_numpy()
    smallest = min(int(np.sum(is_reference & (labels == c))) for c in set(labels[is_reference]))
    keep = ~is_reference
    for name in set(labels[is_reference]):
        keep[rng.permutation(np.flatnonzero(is_reference & (labels == name)))[:smallest]] = True
    return adata[keep].copy()


def ablation_variants(finetune_config, steps: int | None) -> dict[str, dict]:
    """Name -> the FinetuneConfig fields each variant changes (``same_start``: from the checkpoint's
    own untrained start; ``balanced``: a class-balanced reference)."""
    longer = {"max_steps": 3 * steps} if steps else {"epochs": 3 * finetune_config.epochs}
    return {
        "default": {},
        "default, from the untrained same start": {"same_start": True},
        "weights as trained (finetune.weight_average: 0, the previous default)": {"weight_average": 0.0},
        "contexts from every gene (finetune.context_hvg: null, the previous default)": {"context_hvg": None},
        "linear head on the frozen encoder (--mode linear)": {"mode": "linear"},
        "encoder lr 1e-5, no warmup, last epoch (the previous default)":
            {"lr": 1e-5, "encoder_warmup": 0.0, "select_epoch": False},
        "encoder lr 3e-4": {"lr": 3e-4}, "encoder lr 1e-3": {"lr": 1e-3},
        "encoder lr 1e-3, no warmup": {"lr": 1e-3, "encoder_warmup": 0.0},
        "last epoch (no selection)": {"select_epoch": False},
        "three times the steps": longer,
        "class-weighted loss (--class-weight balanced)": {"class_weight": "balanced"},
        "class-balanced reference (each class cut to the smallest)": {"balanced": True},
    }


def ablation(adata, checkpoint: Path, finetune_config, steps: int | None, seeds: int, only: list[str]) -> None:
    """Fine-tuning variants, each chemistry the reference in turn, seeds 0..``seeds``-1: macro-F1
    and accuracy on the query; ``only``: the variants whose names hold one of these words (empty: all)."""
    import dataclasses

    from sc_fm.classify import ACCURACY, MACRO_F1, annotation_scores
    from sc_fm.config import InputSettings
    from sc_fm.datasets import PBMC_BATCH, PBMC_LABEL
    from sc_fm.evaluate.annotation import CheckpointMethods
    from sc_fm.evaluate.annotation_split import split_reference

    base = dataclasses.replace(finetune_config, max_steps=steps)
    for name, change in ablation_variants(base, steps).items():
        if only and not any(word in name for word in only):
            continue
        change = dict(change)
        same_start, is_balanced = change.pop("same_start", False), change.pop("balanced", False)
        for reference in adata.obs[PBMC_BATCH].cat.categories:
            cells = balanced(adata, PBMC_BATCH, PBMC_LABEL, reference) if is_balanced else adata
            split = split_reference(cells, PBMC_BATCH, PBMC_LABEL, [reference], "PBMC")
            rows = CheckpointMethods(checkpoint, split, dataclasses.replace(base, **change),
                                     InputSettings(batch_key=PBMC_BATCH), False, "PBMC")
            for seed in range(seeds):
                scores = annotation_scores(split.truth, rows.finetuned(seed, same_start=same_start), split.shared)
                print(f"ablation [{reference} -> query] seed {seed} {name}: macro F1 {scores[MACRO_F1]:.3f}, "
                      f"accuracy {scores[ACCURACY]:.3f} ({int(split.reference.sum())} reference cells)", flush=True)


def gap_and_spread(table, row: str, control: str) -> str:
    """``row``'s macro-F1 lead over ``control`` beside the larger of their seed sds: a lead inside
    the spread is a tie, whichever side of 1.0 the ratio falls."""
    from sc_fm.classify import MACRO_F1
    from sc_fm.evaluate.seeds import compare

    spread = compare(table, row, control, MACRO_F1)[1]
    return f"gap {table.loc[row, MACRO_F1] - table.loc[control, MACRO_F1]:+.3f} against seed sd {spread:.3f}"


def annotation_over_seeds(split, checkpoints: dict, name: str, out: Path, eval_config, finetune_config):
    """``run_annotation`` once per seed, seed ``s`` with the checkpoint of seed ``s`` (a report in
    ``out/seed_<s>``); returns the summary over seeds (means, sds) and every seed's scores. A
    method without a seed scores the same every time and counts once, unless it reads the
    checkpoint (``name``'s rows) and the seeds have checkpoints of their own."""
    import dataclasses

    import pandas as pd

    from sc_fm.classify import ACCURACY, MACRO_F1
    from sc_fm.evaluate.annotation import run_annotation
    from sc_fm.evaluate.seeds import METHOD, SEED, summarise

    frames = []
    for seed, checkpoint in checkpoints.items():
        result = run_annotation(split, [checkpoint], out / f"seed_{seed}", dataclasses.replace(eval_config, seed=seed),
                                finetune_config, n_seeds=1, progress=False, where="PBMC")
        frames.append(result.per_seed.assign(**{SEED: seed, "seeded": result.per_seed[SEED].notna()}))
    per_seed = pd.concat(frames, ignore_index=True)
    own_checkpoints = len(set(checkpoints.values())) > 1
    seeded = set(per_seed.loc[per_seed["seeded"], METHOD])
    if own_checkpoints:
        seeded |= {m for m in per_seed[METHOD] if m.startswith(name)}
    first = per_seed[SEED] == next(iter(checkpoints))
    per_seed = per_seed[per_seed[METHOD].isin(seeded) | first].drop(columns="seeded")
    return summarise(per_seed, seeded, (ACCURACY, MACRO_F1)), per_seed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke size: {QUICK_CELLS_PER_CHEMISTRY} cells per chemistry, "
                             f"{QUICK_FINETUNE_STEPS} fine-tuning steps, {QUICK_SCVI_EPOCHS} scVI epochs, 1 seed")
    parser.add_argument("--checkpoint", default=None, help="pretrained directory to evaluate instead")
    parser.add_argument("--workdir", default=None, help="where to pretrain and write the reports (default: temp)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per seeded method (default 3; --quick 1)")
    parser.add_argument("--finetune-steps", type=int, default=None,
                        help="optimiser steps per fine-tuning (default: scfm finetune's epochs)")
    parser.add_argument("--ablation", nargs="*", default=None, metavar="WORD",
                        help="instead: fine-tuning variants (same start, linear head, learning rate, warmup, "
                             "epoch selection, steps, class weights, class balance), both directions, --seeds "
                             "seeds; WORDs pick variants by name")
    parser.add_argument("--stimulate-query", action="store_true",
                        help="add a simulated interferon response to the query's counts (sc_fm.stimulation)")
    args = parser.parse_args()

    from sc_fm import demo
    from sc_fm.classify import MACRO_F1
    from sc_fm.config import EvalConfig, FinetuneConfig
    from sc_fm.datasets import PBMC_BATCH, PBMC_LABEL, load_pbmc_cross_chemistry
    from sc_fm.evaluate.annotation import VERDICT_REFERENCES
    from sc_fm.evaluate.annotation_report import FINETUNED, LOGREG, SCANVI, START_FINETUNED, verdict_lines
    from sc_fm.evaluate.annotation_split import split_reference
    from sc_fm.evaluate.seeds import METHOD, SEED, seed_list
    from sc_fm.pretrained import Pretrained
    from sc_fm.stimulation import stimulate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="scfm_annotation_"))
    size = demo.QUICK if args.quick else demo.FULL
    seeds = seed_list(EvalConfig().seed, args.seeds or (1 if args.quick else 3), "--seeds")
    began = time.perf_counter()
    pretrained_seeds = seeds[:1] if args.ablation is not None else seeds  # the ablation reads one checkpoint
    checkpoints, _, pretrain_s = demo.checkpoints_per_seed(args.checkpoint, work, size, pretrained_seeds)
    adata = load_pbmc_cross_chemistry()
    steps = args.finetune_steps or (QUICK_FINETUNE_STEPS if args.quick else None)
    eval_config = EvalConfig(scvi_epochs=QUICK_SCVI_EPOCHS) if args.quick else EvalConfig()
    finetune_config = FinetuneConfig(label_key=PBMC_LABEL, max_steps=steps)
    if args.quick:
        adata = sample(adata, PBMC_BATCH, QUICK_CELLS_PER_CHEMISTRY)
    if args.ablation is not None:
        ablation(adata, checkpoints[seeds[0]], finetune_config, steps, len(seeds), args.ablation)
        return 0
    name = Pretrained.load(checkpoints[seeds[0]]).name
    ratios: dict[str, list[float]] = {"finetuned_vs_logreg": [], "finetuned_vs_scanvi": [],
                                      "pretrained_vs_start_finetuned": []}
    start_gaps: list[str] = []
    for reference in adata.obs[PBMC_BATCH].cat.categories:
        is_query = (adata.obs[PBMC_BATCH] != reference).to_numpy()
        cells = stimulate(adata, is_query, PBMC_LABEL) if args.stimulate_query else adata
        split = split_reference(cells, PBMC_BATCH, PBMC_LABEL, [reference], "PBMC")
        out = work / f"report_{reference.replace(' ', '_')}{'_stimulated' if args.stimulate_query else ''}"
        table, per_seed = annotation_over_seeds(split, checkpoints, name, out, eval_config, finetune_config)
        f1 = table[MACRO_F1]
        tuned = f1[FINETUNED.format(name)]
        ratios["finetuned_vs_logreg"].append(tuned / f1[LOGREG])
        ratios["finetuned_vs_scanvi"].append(tuned / f1[SCANVI])
        ratios["pretrained_vs_start_finetuned"].append(tuned / f1[START_FINETUNED.format(name)])
        start_gaps.append(gap_and_spread(table, FINETUNED.format(name), START_FINETUNED.format(name)))
        print(f"## reference {reference} ({int(split.reference.sum())} cells) -> query "
              f"({int(split.query.sum())} cells); reports {out}/seed_*")
        print(table.round(3).to_string())
        print("macro F1, every seed:")
        print(per_seed.pivot(index=METHOD, columns=SEED, values=MACRO_F1).reindex(table.index).round(3).to_string())
        candidates = [m for m in table.index if m.startswith(name)]
        print("\n".join(verdict_lines(table, candidates, VERDICT_REFERENCES)))
    where = args.checkpoint or ", ".join(str(path) for path in checkpoints.values())
    print(f"checkpoints {where}; pretraining {pretrain_s:.0f} s, annotation "
          f"{time.perf_counter() - began - pretrain_s:.0f} s; seeds {seeds}; fine-tuning "
          f"{f'{steps} steps' if steps else f'{finetune_config.epochs} epochs'}")
    prefix = "stimulated_" if args.stimulate_query else ""
    targets = {"finetuned_vs_logreg": 1.0, "finetuned_vs_scanvi": 0.99, "pretrained_vs_start_finetuned": 1.0}
    for key, values in ratios.items():
        gaps = f"; {', '.join(start_gaps)}" if key == "pretrained_vs_start_finetuned" else ""
        print(f"result: {prefix}{key} ratio={min(values):.3f} target={targets[key]} "
              f"(directions: {', '.join(f'{v:.3f}' for v in values)}{gaps})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
