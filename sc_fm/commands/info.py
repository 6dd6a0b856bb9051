"""``scfm info STORE [--json]``: cells, genes, shards, sources, QC drops, vocabulary hash."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="a corpus store written by scfm prepare")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")


def run(args: argparse.Namespace) -> int:
    from data_pipelines.report import describe_store, info_text
    from sc_fm.store import CorpusStore

    info = describe_store(CorpusStore(args.store))
    print(json.dumps(info, indent=1) if args.json else info_text(info))
    return 0
