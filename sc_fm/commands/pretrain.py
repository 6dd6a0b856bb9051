"""``scfm pretrain --config FILE -o RUN_DIR [--resume] [KEY=VALUE ...]``.

Runs as one process, or as one of many under ``deepspeed``/``torchrun`` (see ``launch/``):
rank and world size come from the launcher's environment.
"""

from __future__ import annotations

import argparse

from sc_fm.rundir import CHECKPOINTS_DIR, FINAL_DIR, RUN_CONFIG_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE|NAME",
                        help="run config: a YAML path or a shipped preset name (tiny, small, base, demo)")
    parser.add_argument("-o", "--output", required=True, metavar="RUN_DIR",
                        help=f"run directory: {RUN_CONFIG_FILE}, {CHECKPOINTS_DIR}/step_N/, {FINAL_DIR}/")
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
    evaluator = None
    if config.train.eval_every > 0:
        from functools import partial

        from sc_fm.evaluate import PretrainEvaluator

        evaluator = partial(PretrainEvaluator, config.eval)
    final = pretrain(config, args.output, resume=args.resume, evaluator=evaluator)
    if DistEnv.from_env().is_main:
        print(final)
    return 0
