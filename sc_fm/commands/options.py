"""The config tree for commands other than ``pretrain``: ``--config FILE|NAME`` plus ``KEY=VALUE``
overrides, with each command's own flags as the last word on the keys they name."""

from __future__ import annotations

import argparse

from sc_fm.config import RunConfig, load_config


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """The positional CHECKPOINT that every command reading a pretrained directory takes."""
    parser.add_argument("checkpoint", help="pretrained directory (RUN_DIR/final or checkpoints/step_N)")


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: the only way a command replaces an existing output (``sc_fm.outputs``)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output (built beside it, then swapped in)")


def add_config_arguments(parser: argparse.ArgumentParser, section: str, tracked: bool = False) -> None:
    """``--config`` and the ``KEY=VALUE`` overrides; ``tracked``: the command logs a report to MLflow
    (under the ``tracking`` section), and ``--no-tracking`` sets ``tracking.enabled=false``."""
    parser.add_argument("--config", default=None, metavar="FILE|NAME",
                        help=f"YAML with a {section}: section (or a shipped run preset name)")
    if tracked:
        parser.add_argument("--no-tracking", action="store_true",
                            help="do not log to MLflow (tracking.enabled=false; tracking.uri: where to log)")
    parser.set_defaults(overrides=[], no_tracking=False)  # KEY=VALUE given after the options land here


def add_input_arguments(parser: argparse.ArgumentParser, section: str, batch_help: str | None = None) -> None:
    """The flags of the input contract (``SECTION.input``, ``sc_fm.config.InputSettings``)."""
    parser.add_argument("--batch-key", default=None,
                        help=batch_help or f"obs column of the input's batches: their own gene normalisers when "
                                           f"the checkpoint's tokenizer is batch-aware ({section}.input.batch_key)")
    parser.add_argument("--min-gene-overlap", type=float, default=None,
                        help=f"minimum fraction of the input's genes found in the vocabulary "
                             f"({section}.input.min_gene_overlap)")
    parser.add_argument("--min-genes-mapped", type=int, default=None,
                        help=f"minimum number of the input's genes found in the vocabulary "
                             f"({section}.input.min_genes_mapped, default 100)")


def input_flags(args: argparse.Namespace) -> dict[str, object]:
    """``add_input_arguments``' flags as ``command_config`` keys."""
    return {"input.batch_key": args.batch_key, "input.min_gene_overlap": args.min_gene_overlap,
            "input.min_genes_mapped": args.min_genes_mapped}


def command_config(args: argparse.Namespace, section: str, flags: dict[str, object]) -> RunConfig:
    """``--config`` <- ``KEY=VALUE`` overrides <- the flags the user gave (``None``: not given);
    ``flags`` maps ``key`` of ``section`` to the flag's value."""
    given = [f"{section}.{key}={_yaml(value)}" for key, value in flags.items() if value is not None]
    if args.no_tracking:
        given.append("tracking.enabled=false")
    return load_config(args.config, [*args.overrides, *given])


def _yaml(value: object) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
