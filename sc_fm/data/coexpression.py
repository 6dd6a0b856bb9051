"""Gene embeddings initialised from the corpus's co-expression: its principal axes.

A randomly initialised gene table knows nothing, and a few hundred CPU steps teach it little:
the pooled embedding of a new cell then is a random projection of which genes it expresses,
which mixes the few genes that tell cell states apart with the many that do not (the untrained
control). The corpus already says which genes vary together. Its cells, normalised exactly as
the tokenizer normalises them (depth, then the per-group gene medians, then log1p), form a
cells x genes matrix whose principal axes are the programs that vary most across the corpus;
each gene's loadings on the top ``d_model`` axes become its starting embedding. Mean pooling
over a cell's context genes then starts as the cell's projection onto those programs (PCA of
the corpus, applied to the cell), and training refines it from there.

Only the training cells count: ``data.include``/``data.exclude`` hold cells out here too, so an
evaluation set inside a store never shapes the start. Large corpora are sampled in blocks of
cells (``max_cells``), which bounds memory and time; the axes of a random sample of 20k cells
are those of the corpus to within the sampling noise of its small components.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from sc_fm.config import DataConfig
from sc_fm.data.filters import CellFilter
from sc_fm.data.kept import every_block, kept_blocks
from sc_fm.errors import ConfigError
from sc_fm.store import CorpusStore

# (indptr, indices, data, each row's normaliser group value or None) -> one value per nonzero
Normalise = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]


def sample_blocks(stores: Sequence[CorpusStore], max_cells: int, seed: int) -> list[tuple[int, int, int]]:
    """``(store, shard, start)`` of the blocks to read: all of them, or a random subset holding
    about ``max_cells`` cells."""
    blocks = every_block(stores)
    total = sum(store.n_cells for store in stores)
    if total <= max_cells:
        return blocks
    keep = max(1, int(round(len(blocks) * max_cells / total)))
    picked = np.random.default_rng(seed).choice(len(blocks), size=keep, replace=False)
    return [blocks[i] for i in sorted(picked)]


def kept_normalised_rows(stores: Sequence[CorpusStore], config: DataConfig, normalise: Normalise,
                         group: str | None, max_cells: int, seed: int) -> sp.csr_matrix:
    """The training cells (or a block sample of them) as normalised values, cells x genes."""
    cell_filter = CellFilter(config.include, config.exclude)
    if cell_filter.active:
        cell_filter.check(stores)
    parts = []
    for block in kept_blocks(stores, cell_filter, sample_blocks(stores, max_cells, seed)):
        values = normalise(block.indptr, block.indices, block.data, None if group is None else block.values(group))
        parts.append(sp.csr_matrix((values, block.indices, block.indptr),
                                   shape=(len(block.indptr) - 1, block.store.n_genes)))
    if not parts:  # every cell held out: coexpression_loadings says so
        return sp.csr_matrix((0, stores[0].n_genes))
    return sp.vstack(parts, format="csr")


DENSE_FROM = 0.05  # fraction of nonzeros above which a dense product beats a sparse one
DENSE_BYTES = 512 * 2**20  # and the most memory a dense copy of the sample may take


def centred_top_axes(rows: sp.csr_matrix, k: int, seed: int, oversample: int = 64,
                     power_iterations: int = 4, dense_bytes: int = DENSE_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Singular values ``[k]`` and right singular vectors ``[k, genes]`` of ``rows`` minus its
    column means, by a randomised range finder with power iterations (Halko, Martinsson and
    Tropp 2011), the centring applied inside each product so the matrix stays sparse.

    scikit-learn's PCA takes sparse input only with ARPACK (one matrix-vector product at a
    time: 17 s for the demo corpus's 7,424 cells) or a genes x genes covariance (too large for a
    real vocabulary), and its ``randomized_svd`` would need the centred matrix itself. Blocks of
    ``k + oversample`` vectors here: 6.7 s on the same cells, holding 99.5% of the exact top-128
    variance (the last axes, whose eigenvalues are close to their neighbours', least exactly).
    A sample dense enough (``DENSE_FROM``) and small enough (``dense_bytes``) is multiplied as
    a dense array: scipy's sparse products run on one core at ~1 GFLOP/s, and the demo's
    cells (30% nonzero) took 0.35 s a product that way, ten products per run.
    """
    x = rows.astype(np.float64)  # float32 mixes near-equal trailing axes (tested against an exact SVD)
    if x.nnz >= DENSE_FROM * x.shape[0] * x.shape[1] and x.shape[0] * x.shape[1] * 8 <= dense_bytes:
        x = x.toarray()
    mean = np.asarray(x.mean(axis=0), x.dtype).ravel()
    width = min(k + oversample, *x.shape)

    def times(m: np.ndarray) -> np.ndarray:  # (x - 1 mean^T) @ m
        return x @ m - mean @ m

    def transposed_times(m: np.ndarray) -> np.ndarray:  # (x - 1 mean^T)^T @ m
        return x.T @ m - np.outer(mean, m.sum(axis=0))

    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(times(rng.standard_normal((x.shape[1], width)).astype(x.dtype)))
    for _ in range(power_iterations):
        basis, _ = np.linalg.qr(transposed_times(basis))
        basis, _ = np.linalg.qr(times(basis))
    _, values, vectors = np.linalg.svd(transposed_times(basis).T, full_matrices=False)
    return values[:k], vectors[:k]


def coexpression_loadings(rows: sp.csr_matrix, dim: int, scale: float, seed: int) -> np.ndarray:
    """``[genes, dim]``: each gene's loadings on the top ``dim`` principal axes of ``rows``
    (``centred_top_axes``), scaled to root mean square ``scale`` (as a normal start of std ``scale``)."""
    n_components = min(dim, min(rows.shape) - 1)
    if n_components < 1:
        raise ConfigError(f"{rows.shape[0]} training cells are too few for co-expression axes",
                          "model.gene_init", "use model.gene_init=normal, or train on more cells")
    values, vectors = centred_top_axes(rows, n_components, seed)
    largest = vectors[np.arange(n_components), np.abs(vectors).argmax(axis=1)]
    vectors = vectors * np.where(largest < 0, -1.0, 1.0)[:, None]  # a fixed sign: largest loading > 0
    loadings = np.zeros((rows.shape[1], dim))
    loadings[:, :n_components] = vectors.T * values  # the 1/sqrt(n - 1) of a variance cancels below
    rms = float(np.sqrt(np.mean(loadings ** 2)))  # not the std, which an axis's sign would move
    return (loadings * (scale / max(rms, 1e-12))).astype(np.float32)
