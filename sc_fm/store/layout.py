"""Names and constants of the store format, its codecs, and checks on names read from a store."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sc_fm.errors import InputDataError

FORMAT = "sc_fm.corpus"
FORMAT_VERSION = 1
GLOBAL_GROUP = "global"
STATS_FIELDS = ("n_expr", "sum_counts", "sum_norm", "sumsq_norm", "nonzero_median", "hist")

# a shard (or statistics group) name is one path component: no separator, no "..", nothing hidden
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def codec_for(name: str):
    """Compressor for a codec name (benchmarked in ``benchmarks/ingest.py``)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "blosc-lz4-bitshuffle":
        return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    if name == "blosc-zstd":
        return BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")
    if name == "zstd":
        return ZstdCodec(level=1)
    raise InputDataError(f"unknown codec {name!r}", "prepare.codec",
                         "use blosc-lz4-bitshuffle, blosc-zstd or zstd")


def plain_name(name: object, field: str, where: str) -> str:
    """``name`` when it is a plain file name that stays inside its folder, else an error.

    Names read from a store (shards, statistics groups) become paths; a crafted
    ``../../other.zarr/shards/x`` must not read another store's data.
    """
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or len(name) > 255:
        raise InputDataError(f"{field} {name!r} is not a plain name inside the store (letters, digits, "
                             f"'.', '_' and '-', not starting with '.' or '-')", where,
                             "the store's zarr.json was edited or crafted: re-create the store with "
                             "`scfm prepare`, or restore its zarr.json")
    return name


@dataclass(frozen=True)
class ShardInfo:
    name: str
    n_cells: int
    nnz: int
    source: str
