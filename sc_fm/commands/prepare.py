"""``scfm prepare SOURCE... -o STORE [--config FILE] [--append] [KEY=VALUE ...]``.

SIGTERM (what SLURM and ``kill`` send at a time limit) is handled like SIGINT (``sc_fm.signals``):
it raises inside the ingest, the store writer aborts (the staging folder or an append's new
shards are removed, the writer lock is released), and the command exits with 143.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("items", nargs="+", metavar="SOURCE|KEY=VALUE",
                        help="an .h5ad, 10x .h5, 10x matrix folder, .csv/.tsv[.gz] count table or YAML "
                             "source list (or corpus stores to merge); KEY=VALUE overrides a prepare "
                             "setting (e.g. prepare.workers=4)")
    parser.add_argument("-o", "--output", required=True, metavar="STORE", help="corpus store to write")
    parser.add_argument("--config", metavar="FILE", help="YAML with a prepare: section (configs/data/*.yaml)")
    parser.add_argument("--append", action="store_true", help="add the sources to an existing store")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--allow-duplicates", action="store_true",
                        help="ingest sources whose file or cells are already in the store or in this call "
                             "(prepare.allow_duplicate_sources)")
    parser.add_argument("--lock-timeout", type=float, metavar="SECONDS",
                        help="how long to wait for another writer of the same store (default: "
                             "$SCFM_LOCK_TIMEOUT or 60)")
    parser.set_defaults(overrides=[])  # KEY=VALUE given after the options land here


def split_items(items: list[str]) -> tuple[list[str], list[str]]:
    """Separate sources from ``KEY=VALUE`` overrides; bare keys mean ``prepare.KEY``."""
    from sc_fm.config import RunConfig

    sections = {f.name for f in dataclasses.fields(RunConfig)}
    sources, overrides = [], []
    for item in items:
        if "=" in item and not Path(item).exists():
            key = item.split("=", 1)[0]
            overrides.append(item if key.split(".")[0] in sections else f"prepare.{item}")
        else:
            sources.append(item)
    return sources, overrides


def run(args: argparse.Namespace) -> int:
    from sc_fm.config import load_config
    from sc_fm.errors import ConfigError
    from sc_fm.signals import EXIT_TERMINATED, Terminated

    sources, overrides = split_items(args.items + args.overrides)
    if args.allow_duplicates:
        overrides.append("prepare.allow_duplicate_sources=true")
    if not sources:
        raise ConfigError("no SOURCE given", "command line", "name at least one input file or source list")
    config = load_config(args.config, overrides).prepare
    try:
        return _run(args, sources, config)
    except Terminated:
        print(f"scfm prepare: terminated (SIGTERM); what it had staged is removed and "
              f"{args.output} is as it was before", file=sys.stderr)
        return EXIT_TERMINATED


def _run(args: argparse.Namespace, sources: list[str], config) -> int:
    from data_pipelines import prepare
    from data_pipelines.merge import merge_stores
    from sc_fm.errors import ConfigError
    from sc_fm.outputs import check_output, full_disk_as_error, is_corpus_store
    from sc_fm.store.location import is_url

    if not is_url(args.output) and not Path(args.output).exists():  # an existing store: the writer decides
        check_output(args.output, kind="dir", inputs=sources)
    stores = [is_corpus_store(source) for source in sources]
    if any(stores) and not all(stores):
        raise ConfigError("sources mix corpus stores and atlas files", "command line",
                          "merge stores in one call and ingest atlases in another (or --append them)")
    kept = "the store is as it was before" if args.append else "no store was written"
    with full_disk_as_error(args.output, kept):
        if all(stores):
            summary = merge_stores(sources, args.output, append=args.append,
                                   allow_duplicate_sources=config.allow_duplicate_sources,
                                   lock_timeout=args.lock_timeout)
        else:
            summary = prepare(sources, args.output, config, append=args.append, progress=not args.quiet,
                              lock_timeout=args.lock_timeout)
    print(summary.table())
    return 0
