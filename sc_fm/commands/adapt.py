"""``scfm adapt CHECKPOINT INPUT.h5ad --batch-key B -o DIR [KEY=VALUE ...]``: self-supervised
adaptation of a checkpoint to the input's cells (no labels); DIR is a normal checkpoint."""

from __future__ import annotations

import argparse

from sc_fm.commands.options import (add_checkpoint_argument, add_config_arguments, add_input_arguments,
                                    add_overwrite_argument, command_config, input_flags)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("input", help="AnnData .h5ad with raw counts in X")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="the adapted checkpoint (accepted by embed, benchmark and finetune)")
    add_overwrite_argument(parser)
    add_input_arguments(parser, "adapt", "obs column of the input's batches: their own gene normalisers and new "
                                         "condition categories (adapt.input.batch_key)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (adapt.steps)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (adapt.lr, default 1e-4)")
    parser.add_argument("--seed", type=int, default=None)
    add_config_arguments(parser, "adapt")


def run(args: argparse.Namespace) -> int:
    from sc_fm.adapt import adapt
    from sc_fm.outputs import check_output, full_disk_as_error
    from sc_fm.pretrained import Pretrained
    from sc_fm.pretrained.h5ad import read_h5ad

    adapt_keys = {**input_flags(args), "steps": args.steps, "lr": args.lr, "seed": args.seed}
    config = command_config(args, "adapt", adapt_keys).adapt
    train_overrides = [o for o in args.overrides if not o.startswith("adapt.")]
    check_output(args.output, kind="dir", overwrite=args.overwrite, inputs=[args.checkpoint, args.input])
    pretrained = Pretrained.load(args.checkpoint)
    adata = read_h5ad(args.input)
    with full_disk_as_error(args.output, "its work folder was removed"):
        adapted = adapt(pretrained, adata, args.output, config, train_overrides, where=args.input,
                        overwrite=args.overwrite)
    readout = (f"embeds on the cells' top {adapted.embedding_dim} principal axes" if adapted.axes is not None
               else f"embeds on the {adapted.embedding_dim}-wide pooled state")
    print(f"adapted {adapted.name} on {adata.n_obs} cells for {config.steps} steps ({readout}): "
          f"{args.output}")
    return 0
