"""Map an AnnData's genes onto a checkpoint's vocabulary, with a missing-genes report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from sc_fm.errors import InputDataError
from sc_fm.vocab import GeneVocab


@dataclass
class GeneMapping:
    """``projection`` (input genes x vocabulary genes, 0/1) turns count rows into vocabulary space;
    input genes mapping to one vocabulary gene are summed, as at ingestion."""

    projection: sp.csr_matrix
    n_input: int
    n_mapped: int
    missing: list[str]

    @property
    def overlap(self) -> float:
        return self.n_mapped / max(self.n_input, 1)

    def to_vocab(self, block) -> sp.csr_matrix:
        """Count rows (dense or sparse, input gene order) -> CSR in vocabulary space, sorted indices."""
        rows = sp.csr_matrix(block) @ self.projection
        rows = sp.csr_matrix(rows)
        rows.sum_duplicates()
        rows.sort_indices()
        return rows

    def keeping(self, vocab_genes: np.ndarray) -> "GeneMapping":
        """The same mapping with every vocabulary gene outside ``vocab_genes`` (indices) dropped, as
        if the input had not measured it: such a gene neither enters a context nor counts towards
        its cell's depth (a fine-tuned classifier's gene panel)."""
        keep = np.zeros(self.projection.shape[1], np.float32)
        keep[np.asarray(vocab_genes, dtype=np.int64)] = 1.0
        projection = sp.csr_matrix(self.projection @ sp.diags(keep))
        projection.eliminate_zeros()
        return dataclasses.replace(self, projection=projection)

    def summary(self) -> str:
        shown = ", ".join(self.missing[:5]) + (" ..." if len(self.missing) > 5 else "")
        text = f"{self.n_mapped}/{self.n_input} genes ({self.overlap:.1%}) map to the vocabulary"
        return text + (f"; {len(self.missing)} missing: {shown}" if self.missing else "")


def map_genes(var_names, vocab: GeneVocab, min_overlap: float, min_mapped: int, where: str) -> GeneMapping:
    """Look genes up by Ensembl ID (version stripped) or symbol; refuse overlaps below the fraction
    ``min_overlap`` or fewer than ``min_mapped`` genes, or all of a smaller vocabulary (``InputSettings``)."""
    names = [str(n) for n in var_names]
    index = vocab.lookup(names)
    found = np.flatnonzero(index >= 0)
    projection = sp.csr_matrix((np.ones(len(found), np.float32), (found, index[found])),
                               shape=(len(names), vocab.n_genes))
    mapping = GeneMapping(projection, len(names), len(found), [names[i] for i in np.flatnonzero(index < 0)])
    if mapping.overlap < min_overlap:
        example = ", ".join(names[:3])
        raise InputDataError(
            f"only {mapping.n_mapped} of {mapping.n_input} genes ({mapping.overlap:.1%}) are in the "
            f"checkpoint's vocabulary ({vocab.name}, {vocab.n_genes} genes); "
            f"the threshold is {min_overlap:.0%}", where,
            f"use var_names with Ensembl IDs or symbols of the vocabulary (got e.g. {example}), "
            "or lower --min-gene-overlap")
    needed = min(min_mapped, vocab.n_genes)
    if mapping.n_mapped < needed:
        raise InputDataError(
            f"only {mapping.n_mapped} of the input's genes are in the checkpoint's vocabulary ({vocab.name}, "
            f"{vocab.n_genes} genes); at least {needed} must be, or every cell looks alike to the model", where,
            f"pass an input measuring more genes, with var_names holding Ensembl IDs or symbols of the "
            f"vocabulary (got e.g. {', '.join(names[:3])}), or lower input.min_genes_mapped "
            f"(e.g. embed.input.min_genes_mapped=50) if the panel is small by design")
    return mapping
