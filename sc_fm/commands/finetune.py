"""``scfm finetune CHECKPOINT INPUT.h5ad --label-key L -o FT_DIR``: cell-type annotation head."""

from __future__ import annotations

import argparse

from sc_fm.commands.options import (add_checkpoint_argument, add_config_arguments, add_input_arguments,
                                    add_overwrite_argument, command_config, input_flags)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("input", help="AnnData .h5ad with raw counts in X and labels in obs")
    parser.add_argument("--label-key", default=None, help="obs column of cell types to learn (finetune.label_key)")
    parser.add_argument("-o", "--output", required=True,
                        help="fine-tuned directory (a pretrained directory plus the head); the input with "
                             "predictions is written there as predictions.h5ad")
    add_overwrite_argument(parser)
    parser.add_argument("--split-key", default=None,
                        help="obs column (donor, batch) whose groups are held out for validation; "
                             "default: a random split")
    add_input_arguments(parser, "finetune")
    parser.add_argument("--adversary-key", default=None,
                        help="obs column the batch-adversarial objective hides from the embedding")
    parser.add_argument("--mode", choices=["full", "linear"], default=None,
                        help="full fine-tune, or linear probe on the frozen encoder")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None,
                        help="encoder learning rate (full mode; default: a tenth of the checkpoint's pretraining rate)")
    parser.add_argument("--head-lr", type=float, default=None)
    parser.add_argument("--class-weight", choices=["none", "balanced"], default=None,
                        help="balanced: weight each class's loss by the inverse of its training cells "
                             "(finetune.class_weight; default none)")
    parser.add_argument("--batch-cells", type=int, default=None, help="cells per training step (finetune.batch_cells)")
    parser.add_argument("--val-fraction", type=float, default=None)
    parser.add_argument("--adversarial-weight", type=float, default=None,
                        help="> 0 adds the batch-adversarial integration objective (needs --adversary-key)")
    parser.add_argument("--seed", type=int, default=None)
    add_config_arguments(parser, "finetune", tracked=True)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from sc_fm.classify import ACCURACY, MACRO_F1
    from sc_fm.finetune import finetune, track_finetune
    from sc_fm.outputs import atomic_dir, check_output
    from sc_fm.pretrained import Pretrained
    from sc_fm.pretrained.h5ad import read_h5ad
    from sc_fm.threads import cpu_threads

    flags = {key: getattr(args, key) for key in (
        "label_key", "split_key", "adversary_key", "mode", "epochs", "lr", "head_lr", "batch_cells",
        "class_weight", "val_fraction", "adversarial_weight", "seed")}
    flags.update(input_flags(args))
    cfg = command_config(args, "finetune", flags)
    config = cfg.finetune
    output = check_output(args.output, kind="dir", overwrite=args.overwrite, inputs=[args.checkpoint, args.input])
    pretrained = Pretrained.load(args.checkpoint)
    adata = read_h5ad(args.input)
    with atomic_dir(output) as work, cpu_threads():
        result = finetune(pretrained, adata, work, config, where=args.input)
        adata.write_h5ad(work / "predictions.h5ad")
    result = dataclasses.replace(result, directory=output)
    predictions = output / "predictions.h5ad"
    selected = (f" (epoch {result.epoch} of {len(result.history)}, kept for its validation macro-F1, so "
                f"these scores are optimistic)" if config.select_epoch else "")
    if result.panel_genes is not None:
        print(f"contexts read on {result.panel_genes:,} genes: the training cells' {config.context_hvg:,} most "
              f"variable that the vocabulary holds (finetune.context_hvg; null reads every gene)")
    print(f"held-out cells: {result.n_val}; accuracy {result.accuracy:.3f}, macro-F1 {result.macro_f1:.3f}"
          f"{selected}")
    baseline = validation_baseline(adata, config.label_key)
    print(f"LogReg (HVG) on the same split: accuracy {baseline[ACCURACY]:.3f}, macro-F1 {baseline[MACRO_F1]:.3f}")
    print(f"fine-tuned checkpoint: {result.directory}; "
          f"predictions in .obs['scfm_prediction'] of {predictions}")
    info = track_finetune(result, cfg.tracking)
    if info is not None:
        print(f"MLflow: {info['tracking_uri']} (run {info['run_id']})")
    return 0


def validation_baseline(adata, label_key: str) -> dict[str, float]:
    """``LogReg (HVG)`` trained on the fine-tuning's training cells and scored, as fine-tuning is, on
    its validation cells: whether fine-tuning was worth it, at a glance."""
    from sc_fm.classify import annotation_scores, logreg_hvg
    from sc_fm.finetune import SPLIT_KEY

    validation = (adata.obs[SPLIT_KEY] == "validation").to_numpy()
    labels = adata.obs[label_key].astype(str).to_numpy()
    predicted = logreg_hvg(adata.X, labels, ~validation)
    return annotation_scores(labels[validation], predicted[validation])
