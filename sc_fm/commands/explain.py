"""``scfm explain CHECKPOINT INPUT.h5ad --groupby COL -o DIR [--batch-key B] [--perturb GENE,...]``."""

from __future__ import annotations

import argparse

from sc_fm.commands.options import (add_checkpoint_argument, add_config_arguments, add_overwrite_argument,
                                    command_config)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("input", help="AnnData .h5ad with raw counts in X and the --groupby column in obs")
    parser.add_argument("--groupby", required=True, help="obs column of the groups (cell types, clusters)")
    parser.add_argument("-o", "--output", required=True,
                        help="report directory: genes.csv, markers.csv, perturbation.csv, dotplot.png, "
                             "report.md")
    add_overwrite_argument(parser)
    parser.add_argument("--batch-key", default=None,
                        help="obs column whose batches get their own gene normalisers (explain.batch_key)")
    parser.add_argument("--perturb", default=None, metavar="GENE[,GENE...]",
                        help="genes (Ensembl IDs or symbols) to delete / raise in silico; "
                             "default: each group's top attributed gene (explain.perturb_top)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="k of genes.csv's top_k_fraction (explain.top_k)")
    parser.add_argument("--steps", type=int, default=None, help="integrated-gradients steps (explain.steps)")
    parser.add_argument("--max-cells-per-group", type=int, default=None,
                        help="attribute at most this many cells per group (explain.max_cells_per_group)")
    parser.add_argument("--min-gene-overlap", type=float, default=None,
                        help="minimum fraction of the input's genes found in the vocabulary")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_config_arguments(parser, "explain")


def run(args: argparse.Namespace) -> int:
    from sc_fm.explain import explain
    from sc_fm.explain.report import REPORT_MD, write_report
    from sc_fm.explain.tracking import log_explain
    from sc_fm.outputs import atomic_dir, check_output
    from sc_fm.pretrained import Pretrained
    from sc_fm.pretrained.h5ad import read_h5ad

    perturb = [g.strip() for g in args.perturb.split(",") if g.strip()] if args.perturb else None
    cfg = command_config(args, "explain", {
        "batch_key": args.batch_key, "perturb": perturb, "top_k": args.top_k, "steps": args.steps,
        "max_cells_per_group": args.max_cells_per_group, "min_gene_overlap": args.min_gene_overlap,
        "tracking": False if args.no_tracking else None})
    config = cfg.explain
    output = check_output(args.output, kind="dir", overwrite=args.overwrite, inputs=[args.checkpoint, args.input])
    adata = read_h5ad(args.input)
    model = Pretrained.load(args.checkpoint)
    result = explain(model, adata, args.groupby, config, progress=not args.no_progress, where=args.input)
    with atomic_dir(output) as work:
        write_report(result, work, str(args.checkpoint))
    report = output / REPORT_MD
    for k, part in result.markers.groupby("k"):
        print(f"top {k} attributed genes vs DE markers: overlap {part['overlap'].mean():.2f} "
              f"(random genes {part['random_overlap'].mean():.2f}), mean over {len(part)} groups")
    skipped = result.perturbation[result.perturbation["status"] != "ok"].drop_duplicates("gene_id")
    for row in skipped.itertuples():
        print(f"perturbation of {row.symbol} ({row.gene_id}) {row.status}")
    print(f"report: {report}")
    if config.tracking and cfg.tracking.enabled:
        info = log_explain(result.markers, args.output, args.checkpoint, cfg.tracking)
        print(f"MLflow: {info['tracking_uri']} (run {info['run_id']})")
    return 0
