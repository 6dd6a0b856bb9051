"""Which vocabulary an ingest maps genes to (``prepare.vocab``).

``None`` is the shipped human GENCODE v44 vocabulary, or on append the store's own, so that
appending never silently changes token meaning; ``corpus`` builds one from the union of the
sources' Ensembl IDs (sorted, version suffixes stripped); anything else is a vocabulary TSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.readers import open_reader
from data_pipelines.sources import SourceSpec
from sc_fm.errors import InputDataError
from sc_fm.store import CorpusStore
from sc_fm.vocab import GeneVocab, default_vocab, is_ensembl_id, strip_version

CORPUS = "corpus"
_SYMBOL_COLUMNS = ("symbol", "gene_symbols", "gene_symbol", "feature_name", "gene_name", "gene_names")


def resolve_vocab(setting: str | None, specs: list[SourceSpec], append_to: Path | None = None) -> GeneVocab:
    """The vocabulary named by ``prepare.vocab`` (see module docstring)."""
    if setting is None:
        return CorpusStore(append_to).vocab if append_to is not None else default_vocab()
    if setting == CORPUS:
        return CorpusStore(append_to).vocab if append_to is not None else corpus_vocab(specs)
    return GeneVocab.load(setting)


def _ids_and_symbols(genes) -> tuple[np.ndarray, np.ndarray]:
    columns = {"index": genes.index.astype(str).to_numpy()}
    columns.update({str(c): genes[c].astype(str).to_numpy() for c in genes.columns})
    id_col = max(columns, key=lambda c: sum(is_ensembl_id(strip_version(v)) for v in columns[c]))
    ids = np.array([strip_version(v) for v in columns[id_col]], dtype=object)
    symbol_col = next((c for c in _SYMBOL_COLUMNS if c in columns and c != id_col),
                      "index" if id_col != "index" else id_col)
    return ids, columns[symbol_col]


def corpus_vocab(specs: list[SourceSpec]) -> GeneVocab:
    """A vocabulary of every Ensembl ID in the sources, with the first symbol seen for each."""
    symbols: dict[str, str] = {}
    for spec in specs:
        reader = open_reader(spec)
        try:
            ids, names = _ids_and_symbols(reader.genes)
        finally:
            reader.close()
        for gene_id, symbol in zip(ids, names):
            if is_ensembl_id(gene_id):
                symbols.setdefault(gene_id, symbol)
    if not symbols:
        raise InputDataError("no source has Ensembl gene IDs to build a corpus vocabulary from",
                             ", ".join(s.label for s in specs),
                             "label genes with Ensembl IDs, or leave prepare.vocab unset for the default "
                             "human vocabulary (which also maps symbols)")
    ids = sorted(symbols)
    return GeneVocab(ids, [symbols[g] for g in ids], name=CORPUS)
