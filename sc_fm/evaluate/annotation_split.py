"""The reference/query split of an annotation benchmark, and the checks that refuse a split no
method could be scored on.

The query's labels are taken out of the cells here, before any method runs: every method sees
``AnnotationSplit.cells`` (no label column) and the reference's labels; ``truth`` is read only
when the predictions are scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sc_fm.errors import InputDataError
from sc_fm.pretrained.inputs import require_counts, require_obs_column, stored_values

MIN_REFERENCE_CELLS_PER_CLASS = 2  # the fine-tuning split keeps one of each class for training and one for validation


@dataclass
class AnnotationSplit:
    """``cells``: every cell, without the label column; ``reference``: boolean mask of the
    reference cells; ``reference_labels``: their labels (in order); ``truth``: the query's labels
    (None where a query cell has none), for scoring only."""

    cells: object
    reference: np.ndarray
    reference_labels: np.ndarray
    truth: np.ndarray
    batch_key: str
    reference_values: list[str]

    @property
    def query(self) -> np.ndarray:
        return ~self.reference

    @property
    def classes(self) -> list[str]:
        """The reference's classes: what any method can predict."""
        return sorted(set(self.reference_labels))

    @property
    def query_classes(self) -> list[str]:
        return sorted({t for t in self.truth if t is not None})

    @property
    def shared(self) -> list[str]:
        """Classes of both reference and query: the classes that macro-F1 averages."""
        return sorted(set(self.classes) & set(self.query_classes))

    @property
    def unseen(self) -> list[str]:
        """Query classes absent from the reference: no method can name them."""
        return sorted(set(self.query_classes) - set(self.classes))

    def labels(self) -> np.ndarray:
        """Labels of every cell as methods may see them: the reference's, None for the query."""
        out = np.full(self.cells.n_obs, None, dtype=object)
        out[self.reference] = self.reference_labels
        return out


def split_reference(adata, batch_key: str | None, label_key: str, reference_values: list[str],
                    where: str) -> AnnotationSplit:
    """Reference = cells whose ``batch_key`` is one of ``reference_values``; query = the rest."""
    if batch_key is None:
        raise InputDataError("an annotation benchmark needs the batch of every cell to split reference from "
                             "query", where, "pass --batch-key COLUMN and --reference VALUE[,VALUE...]")
    require_obs_column(adata, batch_key, "--batch-key", where)
    if label_key not in adata.obs.columns:
        raise InputDataError(f"no column {label_key!r} in .obs (columns: {', '.join(map(str, adata.obs.columns))})",
                             where, "pass an existing column of cell types with --label-key")
    require_counts(stored_values(adata.X), where)
    batches = adata.obs[batch_key].astype(str).to_numpy()
    known = sorted(set(batches))
    values = [str(v) for v in reference_values]
    missing = [v for v in values if v not in known]
    if not values or missing:
        raise InputDataError(f"--reference {','.join(missing) or '(empty)'} is not a value of .obs[{batch_key!r}] "
                             f"(its values: {', '.join(known)})", where,
                             "pass with --reference one or more of those values, comma-separated")
    reference = np.isin(batches, values)
    if reference.all():
        raise InputDataError(f"the reference ({', '.join(values)}) holds every cell, so no query is left to "
                             f"label", where, f"leave at least one value of .obs[{batch_key!r}] out of --reference")
    labels = adata.obs[label_key]
    missing_labels = int(labels[reference].isna().sum())
    if missing_labels:
        raise InputDataError(f".obs[{label_key!r}] has {missing_labels} missing values among the reference cells",
                             where, "fill or drop those cells, or choose another column with --label-key")
    reference_labels = labels[reference].astype(str).to_numpy()
    counts = pd.Series(reference_labels).value_counts()
    rare = counts[counts < MIN_REFERENCE_CELLS_PER_CLASS]
    if len(rare):
        listed = ", ".join(f"{name!r} ({n})" for name, n in rare.items())
        raise InputDataError(f"reference classes of .obs[{label_key!r}] with fewer than "
                             f"{MIN_REFERENCE_CELLS_PER_CLASS} cells: {listed}; a classifier needs "
                             f"{MIN_REFERENCE_CELLS_PER_CLASS} to train and select on", where,
                             "drop those cells or merge those classes into a broader label")
    if len(counts) < 2:
        raise InputDataError(f"the reference has one class of .obs[{label_key!r}] ({counts.index[0]!r})", where,
                             "choose a reference with two or more cell types")
    query_labels = labels[~reference]
    truth = np.array([None if pd.isna(v) else str(v) for v in query_labels], dtype=object)
    cells = adata.copy()
    del cells.obs[label_key]
    return AnnotationSplit(cells, reference, reference_labels, truth, batch_key, values)


def require_scorable(split: AnnotationSplit, where: str) -> None:
    """At least one query class is in the reference (else no prediction could be right)."""
    if not split.shared:
        raise InputDataError(f"no query class ({', '.join(split.query_classes) or 'none'}) is in the reference "
                             f"({', '.join(split.classes)}), so no prediction could be right", where,
                             "choose a reference that holds at least one of the query's cell types")
