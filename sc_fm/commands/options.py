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


def add_config_arguments(parser: argparse.ArgumentParser, section: str) -> None:
    parser.add_argument("--config", default=None, metavar="FILE|NAME",
                        help=f"YAML with a {section}: section (or a shipped run preset name)")
    parser.set_defaults(overrides=[])  # KEY=VALUE given after the options land here


def command_config(args: argparse.Namespace, section: str, flags: dict[str, object]) -> RunConfig:
    """``--config`` <- ``KEY=VALUE`` overrides <- the flags the user gave (``None``: not given);
    ``flags`` maps ``key`` of ``section`` to the flag's value."""
    given = [f"{section}.{key}={_yaml(value)}" for key, value in flags.items() if value is not None]
    return load_config(args.config, [*args.overrides, *given])


def _yaml(value: object) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
