"""The direct chunk decoder: reads a range of a 1-D store array straight from blosc frames.

``SliceReader`` is what every row read goes through; chunks it cannot decode directly
(other codecs, store kinds, byte orders, or no c-blosc) are read through zarr instead.

Of a local chunk a read needs only in part, only the frame's header, its table of blosc block
offsets and the blosc blocks that hold the range are read from the file, once the process has
read and verified that chunk whole (``_VERIFIED``, keyed by the file's size and modification
time: a chunk rewritten since is read and verified whole again). A loader block of 64 cells
of a 1,024-cell chunk so reads about a tenth of the chunk's bytes, not all of them.

The frames come from local chunk files, or, for a store on object storage (zarr's
``FsspecStore``), from one concurrent multi-object fetch per read (``fs.cat`` of every chunk the
range touches, less those still in memory), retried with back-off (``location.remote_call``) and
kept in the optional local chunk cache (``cache.py``); the decoding and checks are the same.

Format 2 chunks end with zarr's ``crc32c`` codec: the CRC-32C (Castagnoli) of the compressed
chunk, 4 bytes little-endian. Both paths verify it before a single value is used: the direct
path over the whole frame it read (``google_crc32c``, zarr's own dependency, hardware
accelerated; one pass over the compressed bytes, checked through the CRC's residue so the
frame is not copied), the zarr path by zarr's codec. A mismatch, or a missing chunk file (format
2 writes every chunk), raises ``InputDataError`` naming the store, shard, array and chunk.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
import sys
from pathlib import Path

import numpy as np
import zarr

from sc_fm.errors import InputDataError
from sc_fm.store.cache import chunk_cache, recent_frames
from sc_fm.store.location import filesystem, is_object, remote_call

# CRC-32C of (message + its own CRC-32C, little-endian) is this constant for every message
_CRC32C_RESIDUE = 0x48674BC7
# a blosc frame: 16-byte header (version, version, flags, typesize, nbytes, blocksize, cbytes),
# then int32 offsets of its blocks (absent when the frame is stored uncompressed, memcpyed)
_BLOSC_HEADER = 16
_BLOSC_MEMCPYED = 0x2
# chunk file -> (size, mtime in ns) when this process read it whole and its checksum held
_VERIFIED: dict[str, tuple[int, int]] = {}


@functools.cache
def _blosc() -> ctypes.CDLL | None:
    """c-blosc as numcodecs ships it (its extension exports the C API), or None where it does
    not. The functions used keep no global state (safe in threads): ``blosc_getitem`` decodes a
    range of a frame, touching only the blosc blocks (~512 kB) that hold it;
    ``blosc_decompress_ctx`` a whole frame; ``blosc_cbuffer_validate`` checks a header first."""
    try:
        import numcodecs.blosc

        lib = ctypes.CDLL(numcodecs.blosc.__file__)
        frame, out, size, int_ = ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        lib.blosc_getitem.argtypes = (frame, int_, int_, out)
        lib.blosc_decompress_ctx.argtypes = (frame, out, size, int_)
        lib.blosc_cbuffer_validate.argtypes = (frame, size, ctypes.POINTER(size))
    except (ImportError, OSError, AttributeError):
        return None
    for function in (lib.blosc_getitem, lib.blosc_decompress_ctx, lib.blosc_cbuffer_validate):
        function.restype = ctypes.c_int
    return lib


def _crc32c(data: bytes) -> int:
    import google_crc32c  # zarr's crc32c codec depends on it

    return google_crc32c.value(data)


def has_checksum(array: zarr.Array) -> bool:
    """Whether the array's chunks end with a crc32c (its last codec is zarr's ``crc32c``)."""
    from zarr.codecs import Crc32cCodec

    codecs = getattr(array.metadata, "codecs", ())  # Zarr v2 metadata has none
    return bool(codecs) and isinstance(codecs[-1], Crc32cCodec)


class SliceReader:
    """``reader(lo, hi)``: elements ``[lo, hi)`` of a 1-D store array.

    A loader block (``data.block_cells`` rows) rarely lines up with the chunks, which hold
    about ``chunk_cells`` rows sized from nonzeros, so it usually straddles two; through zarr
    that decodes both whole chunks (~2x the needed work) plus per-call overhead (event loop,
    copies). Chunks that are plain blosc frames in local files are instead decoded straight
    into the result, and of a partly needed chunk only the blosc blocks that hold the range.
    Any other layout (codecs, store kind, byte order) reads through zarr.

    ``store``, ``shard`` and ``name`` only label errors (``name``: the array inside the shard).
    """

    def __init__(self, array: zarr.Array, store: str | Path | None = None, shard: str | None = None,
                 name: str | None = None):
        self.array = array
        self.chunk = int(array.chunks[0])
        self.store, self.shard, self.name = store, shard, name or array.path
        self.checksum = has_checksum(array)
        self.lib = _blosc()
        self.folder = self._local_folder(array)
        self.url = self._remote_prefix(array)
        self.cache = chunk_cache() if self.url is not None and shard is not None else None
        # where the directly decoded chunks come from (a folder or a URL); None: through zarr
        self.directory = (self.folder or self.url if self.lib is not None
                          and self._plain(array, self.chunk, self.checksum) else None)

    @staticmethod
    def _local_folder(array: zarr.Array) -> Path | None:
        from zarr.storage import LocalStore

        return Path(array.store.root) / array.path if isinstance(array.store, LocalStore) else None

    @staticmethod
    def _remote_prefix(array: zarr.Array) -> str | None:
        """``protocol://bucket/.../array`` of an array on object storage, else None."""
        from zarr.storage import FsspecStore

        if not isinstance(array.store, FsspecStore):
            return None
        protocol = array.store.fs.protocol
        protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
        return f"{protocol}://{array.store.path.rstrip('/')}/{array.path}"

    @staticmethod
    def _plain(array: zarr.Array, chunk: int, checksum: bool) -> bool:
        from zarr.codecs import BloscCodec, BytesCodec
        from zarr.storage import FsspecStore, LocalStore

        codecs = list(getattr(array.metadata, "codecs", ()))  # Zarr v2 metadata has none
        if checksum:
            codecs = codecs[:-1]
        return (array.ndim == 1 and chunk < 2**31 and isinstance(array.store, (LocalStore, FsspecStore))
                and sys.byteorder == "little" and len(codecs) == 2 and isinstance(codecs[0], BytesCodec)
                and (array.dtype.itemsize == 1 or codecs[0].endian == codecs[0].endian.little)
                and isinstance(codecs[1], BloscCodec))

    @property
    def n_chunks(self) -> int:
        return -(-int(self.array.shape[0]) // self.chunk) if self.chunk else 0

    def whole(self) -> np.ndarray:
        """The whole array (of any number of dimensions, chunked along the first only)."""
        if self.array.ndim == 1:
            return self(0, int(self.array.shape[0]))
        return self._through_zarr(0, int(self.array.shape[0]), 0, self.n_chunks - 1, whole=True)

    def __call__(self, lo: int, hi: int) -> np.ndarray:
        if hi <= lo:
            return np.zeros(0, self.array.dtype)
        first, last = lo // self.chunk, (hi - 1) // self.chunk
        if self.directory is None:
            return self._through_zarr(lo, hi, first, last)
        local = self.folder is not None
        frames = {} if local else self._frames(range(first, last + 1))
        out = np.empty(hi - lo, self.array.dtype)
        for j in range(first, last + 1):
            start = j * self.chunk
            a, b = max(lo, start), min(hi, start + self.chunk)
            if local and b - a < self.chunk and self._decode_local_part(j, a - start, b - a, out[a - lo: b - lo]):
                continue
            frame = self._frames(range(j, j + 1))[j] if local else frames[j]
            self._decode(j, frame, a - start, b - a, out[a - lo: b - lo])
        return out

    def _decode_local_part(self, j: int, start: int, n: int, out: np.ndarray) -> bool:
        """Items ``[start, start + n)`` of local chunk ``j`` into ``out`` from only the bytes
        that hold them; False (nothing read) where the chunk must be read whole: not yet
        verified by this process, changed since, missing, or stored uncompressed."""
        path = self._chunk_path(j)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            stat = os.fstat(fd)
            if self.checksum and _VERIFIED.get(str(path)) != (stat.st_size, stat.st_mtime_ns):
                return False
            header = os.pread(fd, _BLOSC_HEADER, 0)
            if len(header) < _BLOSC_HEADER or header[2] & _BLOSC_MEMCPYED:
                return False
            nbytes, blocksize, cbytes = struct.unpack_from("<iii", header, 4)
            if (nbytes != self.chunk * out.itemsize or blocksize <= 0
                    or cbytes + (4 if self.checksum else 0) != stat.st_size):
                return False
            n_blocks = -(-nbytes // blocksize)
            table = os.pread(fd, 4 * n_blocks, _BLOSC_HEADER)
            offsets = np.frombuffer(table, "<i4")
            if len(offsets) < n_blocks:
                return False
            first = start * out.itemsize // blocksize
            last = ((start + n) * out.itemsize - 1) // blocksize
            lo, hi = int(offsets[first]), int(offsets[last + 1]) if last + 1 < n_blocks else cbytes
            if not _BLOSC_HEADER + len(table) <= lo < hi <= cbytes:
                return False
            frame = np.empty(cbytes, np.uint8)  # untouched pages of it are never allocated
            frame[:_BLOSC_HEADER] = np.frombuffer(header, np.uint8)
            frame[_BLOSC_HEADER: _BLOSC_HEADER + len(table)] = np.frombuffer(table, np.uint8)
            if os.preadv(fd, [memoryview(frame)[lo:hi]], lo) != hi - lo:
                return False
        finally:
            os.close(fd)
        done = self.lib.blosc_getitem(frame.ctypes.data_as(ctypes.c_char_p), start, n, out.ctypes.data)
        if done != out.nbytes:
            raise self._damaged(j, f"does not decode (c-blosc returned {done})")
        return True

    def _chunk_key(self, j: int) -> str:
        return self.array.metadata.encode_chunk_key((j,) + (0,) * (self.array.ndim - 1))

    def _chunk_path(self, j: int) -> Path | str | None:
        """The chunk's file, or its URL on object storage."""
        if self.folder is not None:
            return self.folder / self._chunk_key(j)
        return f"{self.url}/{self._chunk_key(j)}" if self.url is not None else None

    def _frames(self, chunks: range) -> dict[int, bytes | None]:
        """The stored bytes of each chunk (None: no such file or object)."""
        if self.url is None:
            out = {}
            for j in chunks:
                try:
                    out[j] = self._chunk_path(j).read_bytes()
                except FileNotFoundError:
                    out[j] = None
            return out
        urls = {j: self._chunk_path(j) for j in chunks}
        recent = recent_frames()
        out = {j: recent.get(u) for j, u in urls.items()}
        if self.cache:
            for j in chunks:
                if out[j] is None:
                    out[j] = self.cache.get(urls[j])
                    if out[j] is not None:
                        recent.put(urls[j], out[j])
        wanted = [j for j in chunks if out[j] is None]
        if wanted:
            fs, _ = filesystem(self.url)
            keys = [urls[j].split("://", 1)[1] for j in wanted]
            fetched = remote_call(lambda: _cat(fs, keys), self.url,
                                  f"reading {self._label(wanted[0])}" + (f" (and {len(wanted) - 1} more "
                                                                         "chunks)" if len(wanted) > 1 else ""),
                                  _REMOTE_FIX)
            for j, key in zip(wanted, keys):
                out[j] = fetched[key]
                if out[j] is not None:
                    recent.put(urls[j], out[j])
                    if self.cache:
                        self.cache.put(urls[j], out[j])
        return out

    def _through_zarr(self, lo: int, hi: int, first: int, last: int, whole: bool = False) -> np.ndarray:
        if self.checksum and (self.folder is not None or self.url is not None):
            for j in range(first, last + 1):  # zarr reads a missing chunk as fill values
                if not self._exists(j):
                    raise self._missing(j)
        try:
            return self.array[...] if whole else self.array[lo:hi]
        except Exception:  # zarr's checksum error is a ValueError; find and name the chunk
            if not self.checksum:
                raise
            for j in range(first, last + 1):
                self.check_chunk(j)
            raise

    def _exists(self, j: int) -> bool:
        path = self._chunk_path(j)
        if isinstance(path, Path):
            return path.is_file()
        fs, key = filesystem(path)
        return remote_call(lambda: is_object(fs, key), path, f"looking up {self._label(j)}", _REMOTE_FIX)

    def check_chunk(self, j: int) -> None:
        """Verify chunk ``j``'s checksum (without decoding it); raises the damaged-chunk error.
        Nothing to check in an unchecksummed array."""
        if not self.checksum:
            return
        frame = self._frames(range(j, j + 1))[j]
        if frame is None:
            raise self._missing(j)
        self._verify(j, frame)

    def _verify(self, j: int, frame: bytes) -> None:
        if len(frame) < 4 or _crc32c(frame) != _CRC32C_RESIDUE:
            stored = int.from_bytes(frame[-4:], "little") if len(frame) >= 4 else None
            computed = _crc32c(frame[:-4]) if len(frame) >= 4 else None
            raise self._damaged(j, "fails its checksum (CRC-32C stored "
                                   + (f"{stored:08x}, computed {computed:08x})" if stored is not None
                                      else f"nothing: the file holds {len(frame)} bytes)"))

    def _decode(self, j: int, frame: bytes | None, start: int, n: int, out: np.ndarray) -> None:
        """Items ``[start, start + n)`` of chunk ``j`` (stored as ``frame``) into ``out``."""
        if frame is None:  # format 1: zarr leaves out chunks that are all fill value
            if self.checksum:
                raise self._missing(j)
            out[:] = self.array.metadata.fill_value
            return
        if self.cache is not None and self.checksum and _crc32c(frame) != _CRC32C_RESIDUE:
            url = self._chunk_path(j)  # a damaged cache entry: fetch the chunk again
            self.cache.drop(url)
            recent_frames().drop(url)
            frame = self._frames(range(j, j + 1))[j]
            if frame is None:
                raise self._missing(j)
        length = len(frame)
        if self.checksum:
            self._verify(j, frame)
            length -= 4  # blosc reads only the frame its header describes
            if self.folder is not None:
                path = self._chunk_path(j)
                stat = os.stat(path)
                _VERIFIED[str(path)] = (stat.st_size, stat.st_mtime_ns)
        lib = self.lib
        size = ctypes.c_size_t()  # the header must fit the file and hold one whole chunk
        done = lib.blosc_cbuffer_validate(frame, length, ctypes.byref(size))
        if done == 0 and size.value != self.chunk * out.itemsize:
            done = -1
        elif done == 0 and n == self.chunk:
            done = lib.blosc_decompress_ctx(frame, out.ctypes.data, out.nbytes, 1)  # 1 thread
        elif done == 0:
            done = lib.blosc_getitem(frame, start, n, out.ctypes.data)
        if done != out.nbytes:
            raise self._damaged(j, f"does not decode (c-blosc returned {done})")

    def _label(self, j: int) -> str:
        parts = [f"store {self.store}" if self.store else None,
                 f"shard {self.shard}" if self.shard else None, f"array {self.name}", f"chunk {j}"]
        return ", ".join(p for p in parts if p)

    def _damaged(self, j: int, why: str) -> InputDataError:
        path = self._chunk_path(j)
        return InputDataError(
            f"{self._label(j)}{f' (file {path})' if path else ''} {why}: the chunk's bytes changed after "
            "it was written (disk, copy or transfer damage), so none of its values are used",
            str(path or self.store or self.name), _FIX)

    def _missing(self, j: int) -> InputDataError:
        path = self._chunk_path(j)
        return InputDataError(
            f"{self._label(j)} is missing (no {'object' if self.url else 'file'} {path}); a format 2 store "
            "writes every chunk, so the store lost a file", str(path), _FIX)


def _cat(fs, keys: list[str]) -> dict[str, bytes | None]:
    """Every object of ``keys`` in one concurrent fetch; None for a missing one (any other error
    is raised, to be retried)."""
    found = fs.cat(keys, on_error="return") if len(keys) > 1 else {keys[0]: _cat_one(fs, keys[0])}
    for key, value in found.items():
        if isinstance(value, FileNotFoundError) and "bucket does not exist" not in str(value):
            found[key] = None
        elif isinstance(value, BaseException):
            raise value
    return found


def _cat_one(fs, key: str) -> bytes | BaseException:
    try:
        return fs.cat_file(key)
    except FileNotFoundError as err:
        return err


_REMOTE_FIX = ("check the storage endpoint is reachable and run again: `scfm pretrain ... --resume` "
               "continues from the run's last checkpoint (SCFM_REMOTE_RETRIES sets how often a failed "
               "read is retried)")

_FIX = ("restore the store (or that shard folder) from a good copy, or re-create it with `scfm prepare`; "
        "`scfm verify STORE` lists every damaged chunk")
