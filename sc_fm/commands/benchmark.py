"""``scfm benchmark INPUT.h5ad --checkpoint CKPT --batch-key B --label-key L -o REPORT_DIR
[--adapt | --adapt-steps N] [--seeds K]``; with ``--task annotation --reference V[,V...]
[--finetune-steps N]``: label the other batches from the reference's labels."""

from __future__ import annotations

import argparse

from sc_fm.commands.options import (add_config_arguments, add_input_arguments, add_overwrite_argument, command_config,
                                    input_flags)
from sc_fm.config import RunConfig
from sc_fm.errors import ConfigError


TASKS = ("integration", "annotation")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="AnnData .h5ad with raw counts in X and batch/label columns in obs")
    parser.add_argument("--task", default="integration", metavar="|".join(TASKS),
                        help="integration: scIB metrics of embeddings (default); annotation: label the query "
                             "batches from the --reference batches' labels")
    parser.add_argument("--reference", default=None, metavar="V[,V...]",
                        help="annotation: the --batch-key values whose cells (with labels) are the reference; "
                             "every other cell is the query, its labels used only for scoring")
    parser.add_argument("--finetune-steps", type=int, default=None, metavar="N",
                        help="annotation: optimiser steps of each fine-tuning (default: finetune.epochs epochs)")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="pretrained directory to compare (repeatable); none: baselines only")
    add_input_arguments(parser, "benchmark",
                        "obs column of the input's batches: the scIB batch label and the input's own gene "
                        "normalisers (benchmark.input.batch_key); without it batch metrics are reported as not "
                        "applicable; --task annotation: the column whose values --reference names")
    parser.add_argument("--label-key", required=True, help="obs column of cell types")
    parser.add_argument("-o", "--output", required=True, help="report directory")
    add_overwrite_argument(parser)
    parser.add_argument("--scvi-epochs", type=int, default=None,
                        help="scVI epochs (default: eval.scvi_epochs)")
    parser.add_argument("--seed", type=int, default=None, help="first seed of every seeded method (eval.seed)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="repeat every seeded method (scVI, Harmony, the random control, the untrained, "
                             "adapted and scratch sc_fm rows) with seeds SEED..SEED+K-1; results.csv holds "
                             "mean and sd (default 1)")
    adapt = parser.add_mutually_exclusive_group()
    adapt.add_argument("--adapt", action="store_true",
                       help="also adapt each checkpoint to the input's cells (adapt.steps steps), and the same "
                            "architecture from scratch, as rows '(adapted)' and '(scratch, adapted)'")
    adapt.add_argument("--adapt-steps", type=int, default=None, metavar="N", help="--adapt with N steps")
    add_config_arguments(parser, "benchmark", tracked=True)


def run(args: argparse.Namespace) -> int:
    if args.task not in TASKS:
        raise ConfigError(f"--task {args.task!r} is not a benchmark task", "scfm benchmark",
                          f"pass --task {' or --task '.join(TASKS)}")
    if args.task == "annotation":
        return run_annotation(args)
    if args.reference is not None or args.finetune_steps is not None:
        raise ConfigError("--reference and --finetune-steps belong to the annotation task", "scfm benchmark",
                          "add --task annotation, or leave them out")
    import dataclasses
    from pathlib import Path

    from sc_fm.candidates import seeded_rows
    from sc_fm.evaluate.benchmark import run_benchmark
    from sc_fm.evaluate.scoring import check_evaluation_set
    from sc_fm.outputs import check_output
    from sc_fm.pretrained.h5ad import read_h5ad

    cfg = benchmark_config(args)
    config = cfg.benchmark
    if args.adapt_steps is not None or args.adapt:
        steps = args.adapt_steps if args.adapt_steps is not None else cfg.adapt.steps
        config = dataclasses.replace(config, adapt_steps=steps)  # checked like the YAML key
    check_output(args.output, kind="dir", overwrite=args.overwrite, inputs=[*args.checkpoint, args.input])
    adata = read_h5ad(args.input)
    batch_key = config.input.batch_key
    check_evaluation_set(adata, batch_key, args.label_key, args.input)
    def build(work: Path):
        rows = seeded_rows(args.checkpoint, adata, config, work, where=args.input)
        return run_benchmark(adata, batch_key, args.label_key, work, args.checkpoint, cfg.eval,
                             inputs=config.input, tracking=cfg.tracking, where=args.input,
                             n_seeds=config.seeds, seeded_candidates=rows)

    return print_result(built_beside(args.output, build))


def run_annotation(args: argparse.Namespace) -> int:
    """``--task annotation``: every method labels the query from the reference; report and MLflow."""
    from sc_fm.evaluate.annotation import run_annotation as annotate
    from sc_fm.evaluate.annotation_split import split_reference
    from sc_fm.outputs import check_output
    from sc_fm.pretrained.h5ad import read_h5ad

    if args.adapt or args.adapt_steps is not None:
        raise ConfigError("--adapt belongs to the integration task", "scfm benchmark",
                          "leave --adapt out with --task annotation")
    if args.reference is None:
        raise ConfigError("--task annotation needs the reference batches", "scfm benchmark",
                          "pass --reference VALUE[,VALUE...] with values of --batch-key")
    extra = [f"finetune.label_key={args.label_key}"]
    if args.finetune_steps is not None:
        extra.append(f"finetune.max_steps={args.finetune_steps}")
    cfg = benchmark_config(args, extra)
    check_output(args.output, kind="dir", overwrite=args.overwrite, inputs=[*args.checkpoint, args.input])
    adata = read_h5ad(args.input)
    config = cfg.benchmark
    split = split_reference(adata, config.input.batch_key, args.label_key, args.reference.split(","), args.input)
    return print_result(built_beside(args.output, lambda work: annotate(
        split, args.checkpoint, work, cfg.eval, cfg.finetune, n_seeds=config.seeds, inputs=config.input,
        tracking=cfg.tracking, where=args.input)))


def benchmark_config(args: argparse.Namespace, overrides: list[str] = ()) -> RunConfig:
    """The run's configuration: ``--config``, its ``KEY=VALUE`` overrides, then either task's flags
    (``overrides``: the task's own keys)."""
    flags = {**input_flags(args), "seeds": args.seeds}
    given = [f"eval.label_key={args.label_key}"]
    if args.seed is not None:
        given.append(f"eval.seed={args.seed}")
    if args.scvi_epochs is not None:
        given.append(f"eval.scvi_epochs={args.scvi_epochs}")
    args.overrides = [*args.overrides, *given, *overrides]
    return command_config(args, "benchmark", flags)


def built_beside(output: str, build):
    """``build(work)``'s report written in a folder beside ``output`` and swapped in when complete
    (``--overwrite`` replaces an earlier report only then); the result names the final report."""
    import dataclasses
    from pathlib import Path

    from sc_fm.outputs import atomic_dir

    with atomic_dir(output) as work:
        result = build(work)
    return dataclasses.replace(result, report=Path(output) / Path(result.report).relative_to(work))


def print_result(result) -> int:
    """The verdict lines, where the report is and the MLflow run (either task's result)."""
    for line in result.verdict:
        print(line)
    print(f"report: {result.report}")
    if result.tracking:
        print(f"MLflow: {result.tracking['tracking_uri']} (run {result.tracking['run_id']})")
    return 0
