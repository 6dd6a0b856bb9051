"""Gene harmonisation: a source's columns -> vocabulary positions.

The identifier column is whichever of the gene table's index and string columns maps the most
genes (Ensembl IDs with or without version suffix, or unambiguous symbols). Source genes
that land on the same vocabulary gene are resolved by ``prepare.duplicate_genes``: ``sum``
adds their counts (the same molecule counted under two names), ``first`` keeps the first
column, ``error`` refuses the source. Unknown genes and non-gene features (antibody capture,
guides) are dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sc_fm.errors import InputDataError
from sc_fm.vocab import MITO_PREFIX, GeneVocab

GENE_EXPRESSION = "Gene Expression"
_FEATURE_TYPE_COLUMNS = ("feature_type", "feature_types")
_N_EXAMPLES = 10


@dataclass
class GeneMapping:
    """Where each source column goes (``-1`` = dropped) and what was counted on the way."""

    columns: np.ndarray  # int64 [n_source_genes]: vocabulary position or -1
    mito: np.ndarray  # bool [n_source_genes]: mitochondrial, for the QC fraction
    gene_column: str
    n_source_genes: int
    n_mapped: int
    n_unmapped: int
    unmapped_examples: list[str]
    n_non_gene_features: int
    n_duplicates: int  # source genes that share their vocabulary gene with an earlier one

    @cached_property
    def identity(self) -> bool:
        """Source columns are vocabulary positions already (a corpus vocabulary in source order)."""
        return bool(np.array_equal(self.columns, np.arange(len(self.columns))))

    @cached_property
    def order_preserving(self) -> bool:
        """Every column is kept and lands after the previous one: sorted rows stay sorted."""
        return bool(np.all(self.columns >= 0) and np.all(np.diff(self.columns) > 0))

    def report(self) -> dict:
        return {"gene_column": self.gene_column, "genes_in_source": self.n_source_genes,
                "genes_mapped": self.n_mapped, "unmapped_genes": self.n_unmapped,
                "unmapped_examples": self.unmapped_examples,
                "non_gene_features": self.n_non_gene_features, "duplicate_genes": self.n_duplicates}


def _candidates(genes: pd.DataFrame) -> dict[str, np.ndarray]:
    out = {"index": genes.index.astype(str).to_numpy()}
    for col in genes.columns:
        if col not in _FEATURE_TYPE_COLUMNS:
            out[str(col)] = genes[col].astype(str).to_numpy()
    return out


def map_genes(genes: pd.DataFrame, vocab: GeneVocab, duplicate_rule: str, min_overlap: float,
              label: str) -> GeneMapping:
    """Map a source's gene table to the vocabulary, refusing sources that barely overlap it."""
    n = len(genes)
    is_gene = np.ones(n, dtype=bool)
    for col in _FEATURE_TYPE_COLUMNS:
        if col in genes.columns:
            is_gene = genes[col].astype(str).to_numpy() == GENE_EXPRESSION
    best_name, best_cols = "index", np.full(n, -1, np.int64)
    names = _candidates(genes)
    for name, values in names.items():
        cols = np.where(is_gene, vocab.lookup(values), -1)
        if (cols >= 0).sum() > (best_cols >= 0).sum():
            best_name, best_cols = name, cols
    mapped = best_cols >= 0
    first_names = ", ".join(names["index"][:3])
    if not mapped.any():
        raise InputDataError(f"no gene identifier matches the vocabulary {vocab.name} (first genes: "
                             f"{first_names})", label,
                             "label genes with Ensembl IDs or symbols of the vocabulary, set prepare.vocab "
                             "to a vocabulary that has them, or use prepare.vocab=corpus")
    fraction = mapped.sum() / max(is_gene.sum(), 1)
    if fraction < min_overlap:
        raise InputDataError(f"only {fraction:.1%} of the genes match the vocabulary {vocab.name} "
                             f"(first genes: {first_names})", label,
                             "check the gene identifiers and species, or lower prepare.min_gene_overlap")
    order = np.flatnonzero(mapped)
    _, first_pos = np.unique(best_cols[order], return_index=True)
    later = np.setdiff1d(order, order[first_pos])
    if len(later) and duplicate_rule == "error":
        examples = ", ".join(names[best_name][later[:3]])
        raise InputDataError(f"duplicated genes: {len(later)} gene(s) map to a vocabulary gene "
                             f"already present (e.g. {examples})", label,
                             "deduplicate the gene table, or set prepare.duplicate_genes to sum or first")
    columns = best_cols.copy()
    if duplicate_rule == "first":
        columns[later] = -1
    symbols = np.char.upper(np.concatenate([v for v in names.values()]).astype(str)).reshape(len(names), n)
    mito = np.char.startswith(symbols, MITO_PREFIX).any(axis=0)
    mito |= np.where(mapped, vocab.mito_mask()[np.maximum(best_cols, 0)], False)
    unmapped = np.flatnonzero(is_gene & ~mapped)
    return GeneMapping(columns, mito, best_name, n, int(mapped.sum()), len(unmapped),
                       [str(v) for v in names[best_name][unmapped[:_N_EXAMPLES]]],
                       int((~is_gene).sum()), len(later))


def to_vocabulary(block: sp.csr_matrix, mapping: GeneMapping, n_genes: int) -> sp.csr_matrix:
    """A cells x source-genes block in vocabulary space: sorted indices, duplicates summed, no zeros."""
    cols = block.indices if mapping.identity else mapping.columns[block.indices].astype(np.int32)
    data, indptr = block.data, block.indptr
    if not mapping.order_preserving:
        keep = cols >= 0
        if not keep.all():
            kept_before = np.zeros(len(keep) + 1, dtype=np.int64)
            np.cumsum(keep, out=kept_before[1:])
            cols, data, indptr = cols[keep], data[keep], kept_before[indptr]
    out = sp.csr_matrix((data, cols, indptr), shape=(block.shape[0], n_genes))
    if not mapping.order_preserving:
        # two linear-time transposes sort every row (and put duplicates side by side) 1.8x
        # faster than sorting row by row, which is n log n per row
        out = out.tocsc().tocsr()
    out.sum_duplicates()  # checks the rows are sorted and unique first: sorts only when they are not
    if not np.all(out.data != 0):
        out.eliminate_zeros()
    return out
