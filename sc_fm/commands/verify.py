"""``scfm verify STORE [--repair] [--json]``: check a whole store, report (and remove) orphans.

Exit status 0 when the store is sound (orphans alone are reported, not failures), 1 when a
problem was found.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="a corpus store written by scfm prepare")
    parser.add_argument("--repair", action="store_true",
                        help="remove orphans (unlisted shards, old statistics and manifests, temporary "
                             "files, STORE.partial-* folders) while holding the store's writer lock")
    parser.add_argument("--lock-timeout", type=float, metavar="SECONDS",
                        help="with --repair: how long to wait for a running writer (default: "
                             "$SCFM_LOCK_TIMEOUT or 60)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from sc_fm.errors import InputDataError
    from sc_fm.store.location import is_url
    from sc_fm.store.verify import repair_store, verify_store

    if is_url(args.store):
        raise InputDataError("scfm verify checks local stores (its orphan and file checks walk folders)",
                             args.store, "every remote read already verifies each chunk's crc32c; to check "
                             "the whole store, copy it locally (e.g. `aws s3 sync`) and verify the copy")

    removed = repair_store(args.store, args.lock_timeout) if args.repair else []
    report = verify_store(args.store)
    if args.json:
        print(json.dumps({**report.as_dict(), "removed": [str(p) for p in removed]}, indent=1))
    else:
        print(report.text() + "".join(f"\nremoved: {p}" for p in removed))
    return 0 if report.ok else 1
