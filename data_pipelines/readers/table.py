"""Dense count tables (CSV/TSV, gzipped or not) as GEO series often ship them.

The table is parsed in row chunks, each turned sparse at once, so memory follows the
nonzeros rather than the dense table. Orientation is detected (rows are genes when the row
labels look more like gene identifiers than the header does) unless ``transpose`` says it:
``True`` means genes x cells. An optional metadata table (first column = cell ID) gives
per-cell annotations and must cover every cell.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from data_pipelines.readers.base import InMemoryReader, reading
from sc_fm.errors import InputDataError
from sc_fm.vocab import GeneVocab, is_ensembl_id, strip_version

_TARGET_CHUNK_VALUES = 20_000_000  # dense values parsed at once (160 MB as float64)


def _separator(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    return "\t" if ".tsv" in suffixes or ".txt" in suffixes else ","


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix.lower() == ".gz" else open(path)


def gene_likeness(labels, vocab: GeneVocab | None) -> int:
    """How many labels are Ensembl IDs (or, given a vocabulary, names it knows)."""
    labels = [str(v) for v in labels]
    if vocab is not None:
        return int((vocab.lookup(labels) >= 0).sum())
    return sum(is_ensembl_id(strip_version(v)) for v in labels)


def _read_metadata(path: Path, cells: pd.Index, label: str) -> pd.DataFrame:
    if not path.is_file():
        raise InputDataError(f"metadata table {path} does not exist", label, "fix the source's metadata path")
    with reading(str(path), "cannot read the metadata table"):
        meta = pd.read_csv(path, sep=_separator(path), index_col=0)
    meta.index = meta.index.astype(str)
    missing = cells.difference(meta.index)
    if len(missing):
        raise InputDataError(f"metadata table {path.name} lacks {len(missing)} of the {len(cells)} cells "
                             f"(e.g. {', '.join(missing[:3])})", label,
                             "give every cell a metadata row whose first column is its ID as in the counts")
    return meta.loc[cells]


def count_table_reader(path: Path, metadata: Path | None = None, transpose: bool | None = None,
                       vocab: GeneVocab | None = None) -> InMemoryReader:
    """A dense CSV/TSV count table (and its optional metadata) as a source."""
    label = str(path)
    sep = _separator(path)
    with reading(label, "cannot read the count table"):
        with _open_text(path) as handle:
            width = len(handle.readline().split(sep))
        if width <= 1:
            raise InputDataError("the count table has no columns (empty file or wrong separator)", label,
                                 f"write a {'tab' if sep == chr(9) else 'comma'}-separated table with a "
                                 "header row and one label column")
        parts, row_labels = [], []
        columns = None
        for chunk in pd.read_csv(path, sep=sep, index_col=0,
                                 chunksize=max(1, _TARGET_CHUNK_VALUES // width)):
            text_columns = [c for c in chunk.columns if chunk[c].dtype.kind not in "iufb"]
            if text_columns:
                raise InputDataError(f"column {text_columns[0]!r} holds non-numeric values", label,
                                     "pass a table of counts with one label column; move annotations "
                                     "to the metadata table")
            parts.append(sp.csr_matrix(chunk.to_numpy(dtype=np.float64)))
            row_labels.extend(chunk.index.astype(str))
            columns = chunk.columns.astype(str)
    if columns is None or not parts:
        raise InputDataError("the count table has no rows", label, "pass a table that holds counts")
    matrix = sp.vstack(parts).tocsr()
    rows, cols = pd.Index(row_labels), pd.Index(columns)
    if transpose is None:
        transpose = gene_likeness(rows, vocab) >= gene_likeness(cols, vocab)
    if transpose:
        matrix, genes, cells = matrix.T.tocsr(), rows, cols
    else:
        genes, cells = cols, rows
    obs = (_read_metadata(Path(metadata), cells, label) if metadata is not None
           else pd.DataFrame(index=cells))
    reader = InMemoryReader(label, matrix, pd.DataFrame(index=genes.rename("gene_id")), obs)
    reader.format = "count-table"
    return reader
