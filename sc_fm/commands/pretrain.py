"""``scfm pretrain --config FILE -o RUN_DIR [--resume] [KEY=VALUE ...]``.

Runs as one process, or as one of many under ``deepspeed``/``torchrun`` (see ``launch/``):
rank and world size come from the launcher's environment.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="run config YAML, e.g. configs/runs/tiny.yaml")
    parser.add_argument("-o", "--output", required=True, metavar="RUN_DIR",
                        help="run directory: config.yaml, checkpoints/step_N/, final/")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in RUN_DIR")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. train.max_steps=100 data.stores=[corpus.zarr]")
    # the deepspeed launcher appends --local_rank; the rank is read from LOCAL_RANK instead
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from sc_fm.config import load_config
    from sc_fm.train import DistEnv, pretrain

    config = load_config(args.config, args.overrides)
    final = pretrain(config, args.output, resume=args.resume)
    if DistEnv.from_env().is_main:
        print(final)
    return 0
