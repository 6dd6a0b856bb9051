"""The corpus store: a self-describing Zarr directory of CSR cell shards.

Layout (all arrays compressed, and in format 2 every chunk ends with a crc32c verified on every
read; see ``codec_for`` and ``direct.py``)::

    STORE/zarr.json           root attrs: format, format_version (1 or 2), vocab hash/name, n_cells,
                              n_genes, shards [{name, n_cells, nnz, source}], categories,
                              stats_version, stats_target_sum (the statistics' counts per cell), complete
    STORE/vocab.tsv           the gene vocabulary (``GeneVocab.save``)
    STORE/manifest-vN.json    every source: path, checksum, cells read/kept, drops by reason
    STORE/shards/NAME/        indptr int64 [n+1], indices int32 [nnz] (sorted per row, vocabulary
                              space), data int32 (integral counts) or float32 [nnz];
                              obs/COL int32 codes (-1 missing) with ``categories`` attr;
                              obs_num/COL float32 (QC figures)
    STORE/stats/vN/GROUP/K/   one ``GeneStats`` per value K of a grouping column
                              (``global`` holds all cells)

A writer holds ``STORE.lock`` from start to commit (``lock.py``). A new store is written at
``STORE.partial-*`` and renamed into place when complete. Appending
writes new shard directories first, then atomically rewrites the root attrs (Zarr writes
metadata through a temporary file and rename) to list them; old shards are never touched,
and a failed append leaves the store as it was.

One job per module:

    layout.py   names and constants of the format, codecs, checks on names read from a store
    location.py where a store lives: a local folder or an fsspec URL (``s3://``, ``gs://``, ...)
    shards.py   writing one shard (or a source's sequence of shards) block by block
    direct.py   the direct blosc chunk decoder behind every row read (``SliceReader``)
    cache.py    the size-bounded local cache of remote chunks (``SCFM_CHUNK_CACHE``)
    reader.py   ``CorpusStore``: read access to a complete store
    writer.py   ``StoreWriter``: create or append to a store, visible only on commit
    publish.py  writing a store on object storage, visible only when complete (no rename there)
    lock.py     ``StoreLock``: the writer lock beside the store (``STORE.lock``), one writer at a time
    verify.py   ``verify_store`` / ``repair_store``: check a whole store, remove orphans (``scfm verify``)
"""

from sc_fm.errors import InputDataError
from sc_fm.store.direct import SliceReader
from sc_fm.store.layout import (FORMAT, FORMAT_VERSION, GLOBAL_GROUP, STATS_FIELDS, ShardInfo,
                                codec_for, plain_name)
from sc_fm.store.reader import CorpusStore
from sc_fm.store.shards import ShardAppender, ShardSequence, write_shard
from sc_fm.store.writer import StoreWriter

__all__ = ["FORMAT", "FORMAT_VERSION", "GLOBAL_GROUP", "STATS_FIELDS", "CorpusStore", "InputDataError",
           "ShardAppender", "ShardInfo", "ShardSequence", "SliceReader", "StoreWriter", "codec_for",
           "plain_name", "write_shard"]
