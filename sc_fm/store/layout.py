"""Names and constants of the store format, its codecs, and checks on names read from a store."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sc_fm.errors import InputDataError

FORMAT = "sc_fm.corpus"
FORMAT_VERSION = 2  # what new stores are written as
READ_VERSIONS = (1, 2)  # 1: no chunk checksums; 2: a crc32c at the end of every chunk
GLOBAL_GROUP = "global"
# The counts per cell the gene statistics are scaled to is recorded as ``stats_target_sum``;
# a store written before that was recorded holds statistics at this scale.
STATS_SCALE_BEFORE_RECORDED = 1e4
STATS_FIELDS = ("n_expr", "sum_counts", "sum_norm", "sumsq_norm", "nonzero_median", "hist")

# a shard (or statistics group) name is one path component: no separator, no "..", nothing hidden
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def codec_for(name: str, checksum: bool = True) -> tuple:
    """The bytes-to-bytes codecs (``compressors=``) of every array: the compressor for a codec
    name (benchmarked in ``benchmarks/ingest.py``), then, in format 2 (``checksum``), zarr's own
    ``crc32c`` codec, which appends the CRC-32C of the compressed chunk as its last 4 bytes
    (little-endian) and is verified on every read (``direct.py``, and zarr itself)."""
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    if name == "blosc-lz4-bitshuffle":
        codec = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    elif name == "blosc-zstd":
        codec = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")
    elif name == "zstd":
        codec = ZstdCodec(level=1)
    else:
        raise InputDataError(f"unknown codec {name!r}", "prepare.codec",
                         "use blosc-lz4-bitshuffle, blosc-zstd or zstd")
    return (codec, Crc32cCodec()) if checksum else (codec,)


def array_config(checksum: bool) -> dict:
    """``create_array(config=...)``: format 2 writes every chunk, even one that is all fill
    value (zarr leaves those out by default), so a lost chunk file is an error, not zeros."""
    return {"write_empty_chunks": True} if checksum else {}


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
