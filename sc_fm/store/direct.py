"""The direct chunk decoder: reads a range of a 1-D store array straight from blosc frames.

``SliceReader`` is what every row read goes through; chunks it cannot decode directly
(other codecs, store kinds, byte orders, or no c-blosc) are read through zarr instead.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from pathlib import Path

import numpy as np
import zarr

from sc_fm.errors import InputDataError


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


class SliceReader:
    """``reader(lo, hi)``: elements ``[lo, hi)`` of a 1-D store array.

    A loader block (``data.block_cells`` rows) rarely lines up with the chunks, which hold
    about ``chunk_cells`` rows sized from nonzeros, so it usually straddles two; through zarr
    that decodes both whole chunks (~2x the needed work) plus per-call overhead (event loop,
    copies). Chunks that are plain blosc frames in local files are instead decoded straight
    into the result, and of a partly needed chunk only the blosc blocks that hold the range.
    Any other layout (codecs, store kind, byte order) reads through zarr.
    """

    def __init__(self, array: zarr.Array):
        self.array = array
        self.chunk = int(array.chunks[0])
        self.lib = _blosc()
        self.directory = self._direct_directory(array, self.chunk) if self.lib is not None else None

    @staticmethod
    def _direct_directory(array: zarr.Array, chunk: int) -> Path | None:
        from zarr.codecs import BloscCodec, BytesCodec
        from zarr.storage import LocalStore

        codecs = getattr(array.metadata, "codecs", ())  # Zarr v2 metadata has none
        plain = (array.ndim == 1 and chunk < 2**31 and isinstance(array.store, LocalStore)
                 and sys.byteorder == "little" and len(codecs) == 2 and isinstance(codecs[0], BytesCodec)
                 and (array.dtype.itemsize == 1 or codecs[0].endian == codecs[0].endian.little)
                 and isinstance(codecs[1], BloscCodec))
        return Path(array.store.root) / array.path if plain else None

    def __call__(self, lo: int, hi: int) -> np.ndarray:
        if hi <= lo:
            return np.zeros(0, self.array.dtype)
        if self.directory is None:
            return self.array[lo:hi]
        out = np.empty(hi - lo, self.array.dtype)
        for j in range(lo // self.chunk, (hi - 1) // self.chunk + 1):
            first = j * self.chunk
            a, b = max(lo, first), min(hi, first + self.chunk)
            self._decode(j, a - first, b - a, out[a - lo: b - lo])
        return out

    def _decode(self, j: int, start: int, n: int, out: np.ndarray) -> None:
        """Items ``[start, start + n)`` of chunk ``j`` into ``out``."""
        path = self.directory / self.array.metadata.encode_chunk_key((j,))
        try:
            frame = path.read_bytes()
        except FileNotFoundError:  # zarr leaves out chunks that are all fill value
            out[:] = self.array.metadata.fill_value
            return
        lib = self.lib
        size = ctypes.c_size_t()  # the header must fit the file and hold one whole chunk
        done = lib.blosc_cbuffer_validate(frame, len(frame), ctypes.byref(size))
        if done == 0 and size.value != self.chunk * out.itemsize:
            done = -1
        elif done == 0 and n == self.chunk:
            done = lib.blosc_decompress_ctx(frame, out.ctypes.data, out.nbytes, 1)  # 1 thread
        elif done == 0:
            done = lib.blosc_getitem(frame, start, n, out.ctypes.data)
        if done != out.nbytes:
            raise InputDataError(f"chunk {path} does not decode ({done})", str(path),
                                 "the store is damaged: re-run `scfm prepare`")
