"""``scfm benchmark INPUT.h5ad --checkpoint CKPT --batch-key B --label-key L -o REPORT_DIR [--seeds K]``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="AnnData .h5ad with raw counts in X and batch/label columns in obs")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="pretrained directory to compare (repeatable); none: baselines only")
    parser.add_argument("--batch-key", default=None,
                        help="obs column of batches; without it batch metrics are reported as not applicable")
    parser.add_argument("--label-key", required=True, help="obs column of cell types")
    parser.add_argument("-o", "--output", required=True, help="report directory")
    parser.add_argument("--scvi-epochs", type=int, default=None,
                        help="scVI epochs (default: eval.scvi_epochs)")
    parser.add_argument("--min-gene-overlap", type=float, default=0.1,
                        help="minimum fraction of the input's genes found in a checkpoint's vocabulary")
    parser.add_argument("--seed", type=int, default=0, help="first seed of every seeded method")
    parser.add_argument("--seeds", type=int, default=1,
                        help="repeat every seeded method (scVI, Harmony, the random control, seeded sc_fm "
                             "rows) "
                             "with seeds SEED..SEED+K-1; results.csv holds mean and sd (default 1)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def run(args: argparse.Namespace) -> int:
    import anndata

    from sc_fm.config import EvalConfig
    from sc_fm.evaluate.benchmark import run_benchmark
    from sc_fm.pretrained.h5ad import open_backed
    from sc_fm.evaluate.seeds import seed_list

    seed_list(args.seed, args.seeds, "--seeds")  # refused before anything is read or trained
    backed = open_backed(args.input)
    backed.file.close()
    adata = anndata.read_h5ad(args.input)
    config = EvalConfig(batch_key=args.batch_key, label_key=args.label_key, seed=args.seed)
    if args.scvi_epochs is not None:
        config.scvi_epochs = args.scvi_epochs
    result = run_benchmark(adata, args.batch_key, args.label_key, args.output, args.checkpoint, config,
                           min_gene_overlap=args.min_gene_overlap, track=not args.no_tracking,
                           where=args.input, n_seeds=args.seeds)
    for line in result.verdict:
        print(line)
    print(f"report: {result.report}")
    if result.tracking:
        print(f"MLflow: {result.tracking['tracking_uri']} (run {result.tracking['run_id']})")
    return 0
