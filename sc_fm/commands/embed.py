"""``scfm embed CHECKPOINT INPUT.h5ad -o OUTPUT.h5ad``: cell embeddings into ``.obsm["X_scfm"]``."""

from __future__ import annotations

import argparse

from sc_fm.commands.options import (add_checkpoint_argument, add_config_arguments, add_overwrite_argument,
                                    command_config)
from sc_fm.errors import ConfigError


def parse_conditions(items: list[str]) -> dict[str, str] | None:
    """``["assay=10x_3p_v3"]`` -> ``{"assay": "10x_3p_v3"}`` (None when no flag was given)."""
    if not items:
        return None
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--condition {item!r} is not KEY=VALUE", "--condition",
                              "write it as e.g. --condition assay=10x_3p_v3")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("input", help="AnnData .h5ad with raw counts in X (read backed, in row blocks)")
    parser.add_argument("-o", "--output", required=True,
                        help="output .h5ad: the input plus obsm['X_scfm'] (the input itself with --overwrite)")
    add_overwrite_argument(parser)
    parser.add_argument("--batch-key", default=None,
                        help="obs column whose batches get their own gene normalisers "
                             "(when the checkpoint's tokenizer is batch-aware); default: global normalisers")
    parser.add_argument("--condition", action="append", default=[], metavar="KEY=VALUE",
                        help="fix a condition token for all cells (repeatable); "
                             "conditions not given are dropped")
    parser.add_argument("--min-gene-overlap", type=float, default=None,
                        help="minimum fraction of the input's genes found in the vocabulary (embed.min_gene_overlap)")
    parser.add_argument("--batch-cells", type=int, default=None, help="cells per model forward (embed.batch_cells)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_config_arguments(parser, "embed")


def _input_size(path: str) -> int | None:
    """The output is a copy of the input plus the embedding: at least the input's size."""
    import os

    return os.path.getsize(path) if os.path.isfile(path) else None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sc_fm.outputs import check_output
    from sc_fm.pretrained import embed_h5ad
    from sc_fm.threads import cpu_threads

    check_output(args.output, kind="file", overwrite=args.overwrite, inputs=[args.checkpoint, args.input],
                 replaceable_input=args.input, needed_bytes=_input_size(args.input))
    config = command_config(args, "embed", {
        "batch_key": args.batch_key, "conditions": parse_conditions(args.condition),
        "min_gene_overlap": args.min_gene_overlap, "batch_cells": args.batch_cells}).embed
    with cpu_threads():
        summary = embed_h5ad(args.checkpoint, args.input, args.output, config, progress=not args.no_progress)
    print(summary.mapping.summary())
    if summary.mapping.missing:
        missing_file = Path(f"{summary.output}.missing_genes.txt")
        missing_file.write_text("\n".join(summary.mapping.missing) + "\n")
        print(f"missing genes listed in {missing_file}")
    print(f"wrote obsm['X_scfm'] ({summary.n_cells} cells x {summary.dim}) to {summary.output}")
    return 0
