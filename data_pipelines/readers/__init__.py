"""Input formats, each behind ``SourceReader``; ``open_reader`` picks one from the source."""

from __future__ import annotations

from pathlib import Path

from data_pipelines.readers.base import SourceReader
from data_pipelines.readers.h5ad import H5adReader, anndata_reader
from data_pipelines.readers.table import count_table_reader
from data_pipelines.readers.tenx import TenxH5Reader, tenx_mtx_reader
from data_pipelines.sources import SourceSpec
from sc_fm.errors import InputDataError
from sc_fm.vocab import GeneVocab

TABLE_SUFFIXES = (".csv", ".tsv", ".txt")


def open_reader(spec: SourceSpec, vocab: GeneVocab | None = None) -> SourceReader:
    """The reader for a source (by file type), validated against its own gene/cell tables."""
    if spec.soma is not None:
        from data_pipelines.readers.soma import SomaReader

        reader = SomaReader(spec.soma, spec.measurement, spec.layer, spec.filter, list(spec.obs_columns.values()))
    elif spec.adata is not None:
        reader = anndata_reader(spec.adata, spec.label, spec.layer)
        reader.format = "anndata"
    else:
        reader = _open_path(Path(spec.path), spec, vocab)
    reader.validate()
    return reader


def _open_path(path: Path, spec: SourceSpec, vocab: GeneVocab | None) -> SourceReader:
    if not path.exists():
        raise InputDataError("does not exist", str(path), "check the source path")
    if path.is_dir():
        return tenx_mtx_reader(path)
    if path.stat().st_size == 0:
        raise InputDataError("the file is empty (0 bytes)", str(path),
                             "re-download or re-export it, or remove it from the sources")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".h5ad"]:
        return H5adReader(path, spec.layer)
    if suffixes[-1:] == [".h5"]:
        return TenxH5Reader(path)
    if any(s in TABLE_SUFFIXES for s in suffixes[-2:]):
        return count_table_reader(path, spec.metadata, spec.transpose, vocab)
    raise InputDataError(f"unknown input format {''.join(path.suffixes) or '(no suffix)'}", str(path),
                         "pass .h5ad, 10x .h5, a 10x matrix folder, or a .csv/.tsv[.gz] count table")


__all__ = ["SourceReader", "open_reader", "TABLE_SUFFIXES"]
