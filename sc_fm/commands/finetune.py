"""``scfm finetune CHECKPOINT INPUT.h5ad --label-key L -o FT_DIR``: cell-type annotation head."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="pretrained directory (RUN_DIR/final or checkpoints/step_N)")
    parser.add_argument("input", help="AnnData .h5ad with raw counts in X and labels in obs")
    parser.add_argument("--label-key", required=True, help="obs column of cell types to learn")
    parser.add_argument("-o", "--output", required=True,
                        help="fine-tuned directory (a pretrained directory plus the head); the input with "
                             "predictions is written there as predictions.h5ad")
    parser.add_argument("--split-key", default=None,
                        help="obs column (donor, batch) whose groups are held out for validation; "
                             "default: a random split")
    parser.add_argument("--batch-key", default=None, help="obs column of batches (normalisers, adversary)")
    parser.add_argument("--mode", choices=["full", "linear"], default="full",
                        help="full fine-tune, or linear probe on the frozen encoder")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-5, help="encoder learning rate (full mode)")
    parser.add_argument("--head-lr", type=float, default=1e-2)
    parser.add_argument("--batch-cells", type=int, default=16)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--adversarial-weight", type=float, default=0.0,
                        help="> 0 adds the batch-adversarial integration objective (needs --batch-key)")
    parser.add_argument("--min-gene-overlap", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import anndata

    from sc_fm.evaluate.checkpoint import load_checkpoint
    from sc_fm.evaluate.h5ad import open_backed
    from sc_fm.finetune import FinetuneConfig, finetune, track_finetune

    open_backed(args.input).file.close()
    adata = anndata.read_h5ad(args.input)
    config = FinetuneConfig(label_key=args.label_key, split_key=args.split_key, batch_key=args.batch_key,
                            mode=args.mode, epochs=args.epochs, batch_cells=args.batch_cells, lr=args.lr,
                            head_lr=args.head_lr, val_fraction=args.val_fraction,
                            adversarial_weight=args.adversarial_weight,
                            min_gene_overlap=args.min_gene_overlap, seed=args.seed)
    result = finetune(load_checkpoint(args.checkpoint), adata, args.output, config, where=args.input)
    predictions = Path(args.output) / "predictions.h5ad"
    adata.write_h5ad(predictions)
    print(f"held-out cells: {result.n_val}; accuracy {result.accuracy:.3f}, macro-F1 {result.macro_f1:.3f}")
    print(f"fine-tuned checkpoint: {result.directory}; "
          f"predictions in .obs['scfm_prediction'] of {predictions}")
    if not args.no_tracking:
        info = track_finetune(result, config)
        print(f"MLflow: {info['tracking_uri']} (run {info['run_id']})")
    return 0
