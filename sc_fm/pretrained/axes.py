"""The embedding's principal axes over the cells a checkpoint was adapted to: its adapted readout.

``scfm adapt`` trains the encoder on the user's cells, then reads every embedding on the top
``adapt.embedding_axes`` principal axes of those cells' pooled states (10 by default, scVI's
latent size). The axes are fitted on the input's cells alone, without labels, as scVI is
trained on them. Why: after adaptation the low-variance axes of the 128-wide pooled state
still carried the chemistry and little cell type (docs/evaluate.md, "Reading the adapted
embedding on its principal axes"). The axes live beside the weights in
``embedding_axes.safetensors``; a directory without the file embeds on the full pooled state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

AXES_FILE = "embedding_axes.safetensors"
REFIT = "adapt the checkpoint again, or delete the file to embed on the full pooled state"


@dataclass(frozen=True)
class EmbeddingAxes:
    """``mean`` ``[d]`` and ``axes`` ``[d, k]`` (orthonormal columns, by falling variance);
    ``variance`` ``[k]``: the fitted cells' variance along each axis."""

    mean: np.ndarray
    axes: np.ndarray
    variance: np.ndarray

    @classmethod
    def fit(cls, embedding: np.ndarray, n_axes: int) -> "EmbeddingAxes":
        """The top ``n_axes`` principal axes of ``embedding`` ``[n, d]`` (at most ``min(n - 1, d)``),
        each signed so that its largest loading is positive (the same cells give the same axes)."""
        if n_axes < 1:
            raise ValueError(f"n_axes must be at least 1 (got {n_axes})")
        data = np.asarray(embedding, np.float64)
        if data.ndim != 2 or len(data) < 2:
            raise ValueError(f"principal axes need at least 2 cells in an [n, d] array (got {data.shape})")
        mean = data.mean(axis=0)
        _, singular, rows = np.linalg.svd(data - mean, full_matrices=False)
        k = min(n_axes, len(data) - 1, data.shape[1])
        axes = rows[:k].T
        largest = axes[np.abs(axes).argmax(axis=0), np.arange(k)]
        axes = axes * np.where(largest < 0, -1.0, 1.0)
        variance = singular[:k] ** 2 / (len(data) - 1)
        return cls(*(np.ascontiguousarray(a, np.float32) for a in (mean, axes, variance)))

    @property
    def n_axes(self) -> int:
        return self.axes.shape[1]

    def apply(self, embedding: np.ndarray) -> np.ndarray:
        """``[n, k]`` float32 coordinates of ``embedding`` ``[n, d]`` on the axes."""
        if embedding.shape[1] != len(self.mean):
            raise ValueError(f"embeddings are {embedding.shape[1]} wide, the axes were fitted on "
                             f"{len(self.mean)}")
        centred = np.asarray(embedding, np.float64) - self.mean
        return (centred @ self.axes.astype(np.float64)).astype(np.float32)

    def save(self, directory: str | Path) -> None:
        from safetensors.numpy import save_file

        tensors = {"mean": self.mean, "axes": self.axes, "variance": self.variance}
        # safetensors writes an array's buffer as it lies: a transposed view would come back scrambled
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(Path(directory) / AXES_FILE))

    @classmethod
    def load(cls, directory: str | Path) -> "EmbeddingAxes | None":
        """The axes saved in ``directory``, or None where it has none (a pretraining's checkpoint)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        from sc_fm.errors import InputDataError

        path = Path(directory) / AXES_FILE
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
            axes = cls(tensors["mean"], tensors["axes"], tensors["variance"])
        except (SafetensorError, OSError, KeyError) as err:
            raise InputDataError(f"the adapted embedding's axes cannot be read ({err})", str(path),
                                 REFIT) from err
        d, k = axes.axes.shape if axes.axes.ndim == 2 else (-1, -1)
        if axes.mean.shape != (d,) or axes.variance.shape != (k,) or not np.isfinite(axes.axes).all():
            raise InputDataError(f"the adapted embedding's axes are damaged (mean {axes.mean.shape}, axes "
                                 f"{axes.axes.shape}, variance {axes.variance.shape})", str(path),
                                 REFIT)
        return axes
