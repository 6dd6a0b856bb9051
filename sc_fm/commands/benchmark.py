"""``scfm benchmark INPUT.h5ad --checkpoint CKPT --batch-key B --label-key L -o REPORT_DIR
[--adapt | --adapt-steps N] [--seeds K]``."""

from __future__ import annotations

import argparse

from sc_fm.commands.options import (add_config_arguments, add_input_arguments, add_overwrite_argument, command_config,
                                    input_flags)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="AnnData .h5ad with raw counts in X and batch/label columns in obs")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="pretrained directory to compare (repeatable); none: baselines only")
    add_input_arguments(parser, "benchmark",
                        "obs column of the input's batches: the scIB batch label and the input's own gene "
                        "normalisers (benchmark.input.batch_key); without it batch metrics are reported as not "
                        "applicable")
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
    import dataclasses
    from pathlib import Path

    from sc_fm.candidates import seeded_rows
    from sc_fm.evaluate.benchmark import run_benchmark
    from sc_fm.evaluate.scoring import check_evaluation_set
    from sc_fm.outputs import check_output
    from sc_fm.pretrained.h5ad import read_h5ad

    flags = {**input_flags(args), "seeds": args.seeds}
    overrides = [f"eval.label_key={args.label_key}"]
    if args.seed is not None:
        overrides.append(f"eval.seed={args.seed}")
    if args.scvi_epochs is not None:
        overrides.append(f"eval.scvi_epochs={args.scvi_epochs}")
    args.overrides = [*args.overrides, *overrides]
    cfg = command_config(args, "benchmark", flags)
    config = cfg.benchmark
    if args.adapt_steps is not None or args.adapt:
        steps = args.adapt_steps if args.adapt_steps is not None else cfg.adapt.steps
        config = dataclasses.replace(config, adapt_steps=steps)  # checked like the YAML key
    check_output(args.output, kind="dir", overwrite=args.overwrite, inputs=[*args.checkpoint, args.input])
    adata = read_h5ad(args.input)
    batch_key = config.input.batch_key
    check_evaluation_set(adata, batch_key, args.label_key, args.input)
    rows = seeded_rows(args.checkpoint, adata, config, Path(args.output), where=args.input)
    result = run_benchmark(adata, batch_key, args.label_key, args.output, args.checkpoint, cfg.eval,
                           inputs=config.input, tracking=cfg.tracking, where=args.input,
                           n_seeds=config.seeds, seeded_candidates=rows)
    for line in result.verdict:
        print(line)
    print(f"report: {result.report}")
    if result.tracking:
        print(f"MLflow: {result.tracking['tracking_uri']} (run {result.tracking['run_id']})")
    return 0
