"""``scfm embed`` on files: stream a backed h5ad through the model, add ``obsm["X_scfm"]`` to a copy.

The output is a byte copy of the input with one element written into it, so every other
part of the AnnData (X, layers, obs, uns, ...) is untouched and nothing is loaded whole.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sc_fm.config import EmbedConfig
from sc_fm.errors import InputDataError
from sc_fm.outputs import atomic_file
from sc_fm.pretrained.bundle import EMBEDDING_KEY, Pretrained
from sc_fm.pretrained.genes import GeneMapping
from sc_fm.pretrained.inputs import counts_matrix


@dataclass
class EmbedSummary:
    output: Path
    n_cells: int
    dim: int
    mapping: GeneMapping


def open_backed(path: str | Path):
    import anndata

    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path} does not exist", str(path), "pass an existing .h5ad file")
    try:
        return anndata.read_h5ad(path, backed="r")
    except (OSError, KeyError, ValueError) as err:
        raise InputDataError(f"not a readable h5ad file ({err})", str(path),
                             "pass an AnnData .h5ad file") from err


def read_h5ad(path: str | Path):
    """An h5ad read whole, for commands that train on it; a file without X takes its counts
    from ``layers["counts"]`` (``counts_matrix``)."""
    import anndata

    open_backed(path).file.close()  # a missing or damaged file: the one-paragraph error
    adata = anndata.read_h5ad(path)
    if adata.X is None:
        adata.X = counts_matrix(adata, str(path))
    return adata


def write_obsm(path: Path, key: str, values: np.ndarray) -> None:
    """Write (or replace) ``obsm[key]`` inside an existing h5ad file."""
    import h5py
    from anndata.io import write_elem

    with h5py.File(path, "a") as f:
        obsm = f.require_group("obsm")
        if key in obsm:
            del obsm[key]
        write_elem(obsm, key, values)


def check_embedding(embedding: np.ndarray, pretrained: Pretrained, where: str) -> None:
    """Refuse an embedding with NaN or infinite values: its checkpoint's weights or normalisers
    are damaged, and a file of NaNs would pass for a result."""
    finite = np.isfinite(embedding).all(axis=1)
    if not finite.all():
        raise InputDataError(f"{int((~finite).sum())} of {len(finite)} cells got a non-finite embedding "
                             f"from checkpoint {pretrained.path}", where,
                             "the checkpoint's weights or normalisers are damaged: re-save or re-train it")


def embed_h5ad(checkpoint: str | Path | Pretrained, input_path: str | Path, output_path: str | Path,
               config: EmbedConfig | None = None, progress: bool = True) -> EmbedSummary:
    """Embed ``input_path`` with ``checkpoint`` into ``output_path`` (may equal the input).

    The output is built as a hidden sibling and renamed into place, so a failure part-way (a
    full disk) leaves the input and any earlier output whole. A non-finite embedding (a
    damaged checkpoint) is an error, never a file."""
    config = config or EmbedConfig()
    pretrained = checkpoint if isinstance(checkpoint, Pretrained) else Pretrained.load(checkpoint)
    input_path, output_path = Path(input_path), Path(output_path)
    where = str(input_path)
    adata = open_backed(input_path)
    try:
        mapping = pretrained.gene_mapping(adata, config.min_gene_overlap, where)
        embedding = pretrained.embed(adata, config.batch_key, config.conditions, key_added=None, mapping=mapping,
                                     batch_cells=config.batch_cells, block_cells=config.block_cells,
                                     progress=progress, where=where)
    finally:
        adata.file.close()
    check_embedding(embedding, pretrained, where)
    with atomic_file(output_path) as tmp:
        shutil.copyfile(input_path, tmp)
        write_obsm(tmp, EMBEDDING_KEY, embedding)
    return EmbedSummary(output_path, embedding.shape[0], embedding.shape[1], mapping)
