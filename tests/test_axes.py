"""The adapted readout: principal axes fitted on the input's cells, saved beside the weights."""

from __future__ import annotations

import numpy as np
import pytest

from sc_fm.errors import InputDataError
from sc_fm.pretrained import Pretrained
from sc_fm.pretrained.axes import AXES_FILE, EmbeddingAxes


def plane_cells(n: int = 400) -> np.ndarray:
    """Cells spread 3 : 1 : 0.1 along three known orthogonal directions of 5-d space, around an offset."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(5, 5)))[0][:, :3]
    spread = rng.normal(size=(n, 3)) * [3.0, 1.0, 0.1]
    spread -= spread.mean(axis=0)
    spread = np.linalg.qr(spread)[0] * np.sqrt(n - 1) * [3.0, 1.0, 0.1]  # uncorrelated, exact variances
    return spread @ basis.T + np.arange(5.0), basis


def test_axes_are_the_known_directions_by_falling_variance():
    cells, basis = plane_cells()
    axes = EmbeddingAxes.fit(cells, 2)
    np.testing.assert_allclose(axes.mean, np.arange(5.0), atol=1e-5)
    np.testing.assert_allclose(np.abs(axes.axes.T @ basis[:, :2]), np.eye(2), atol=1e-5)
    np.testing.assert_allclose(axes.variance, [9.0, 1.0], rtol=1e-5)
    largest = axes.axes[np.abs(axes.axes).argmax(axis=0), [0, 1]]
    assert (largest > 0).all()  # signed by their largest loading: the same cells give the same axes
    coordinates = axes.apply(cells)
    assert coordinates.shape == (len(cells), 2) and coordinates.dtype == np.float32
    np.testing.assert_allclose(coordinates.var(axis=0, ddof=1), [9.0, 1.0], rtol=1e-4)


def test_axes_match_scikit_learn_pca_up_to_sign():
    from sklearn.decomposition import PCA

    cells = np.random.default_rng(1).normal(size=(300, 12)) * np.linspace(3, 0.5, 12)
    mine = EmbeddingAxes.fit(cells, 4).apply(cells)
    theirs = PCA(4, svd_solver="full").fit_transform(cells)
    np.testing.assert_allclose(np.abs(mine), np.abs(theirs), atol=1e-4)


def test_axes_are_capped_by_cells_and_width_and_refuse_nonsense():
    cells = np.random.default_rng(2).normal(size=(4, 6))
    assert EmbeddingAxes.fit(cells, 10).n_axes == 3  # n - 1
    assert EmbeddingAxes.fit(np.random.default_rng(2).normal(size=(50, 6)), 10).n_axes == 6
    with pytest.raises(ValueError, match="at least 1"):
        EmbeddingAxes.fit(cells, 0)
    with pytest.raises(ValueError, match="at least 2 cells"):
        EmbeddingAxes.fit(cells[:1], 2)
    with pytest.raises(ValueError, match="5 wide, the axes were fitted on 6"):
        EmbeddingAxes.fit(cells, 2).apply(np.zeros((3, 5)))


def test_axes_round_trip_and_a_damaged_file_is_refused(tmp_path):
    cells, _ = plane_cells()
    assert EmbeddingAxes.load(tmp_path) is None  # a pretraining's checkpoint: no axes
    fitted = EmbeddingAxes.fit(cells, 3)
    axes = EmbeddingAxes(fitted.mean, np.asfortranarray(fitted.axes), fitted.variance)  # a column-major view
    axes.save(tmp_path)
    again = EmbeddingAxes.load(tmp_path)
    for name in ("mean", "axes", "variance"):
        np.testing.assert_array_equal(getattr(again, name), getattr(axes, name))
    (tmp_path / AXES_FILE).write_bytes(b"not safetensors")
    with pytest.raises(InputDataError, match="cannot be read"):
        EmbeddingAxes.load(tmp_path)


def test_a_checkpoint_with_axes_embeds_on_them_after_a_round_trip(tiny_checkpoint, tiny_atlas, tmp_path):
    base = Pretrained.load(tiny_checkpoint)
    adata = tiny_atlas[:80].copy()
    pooled = base.embed(adata, key_added=None, progress=False)
    axes = EmbeddingAxes.fit(pooled, 5)
    Pretrained(base.model, base.tokenizer, start=base.start_model(), axes=axes).save(tmp_path / "ck")
    loaded = Pretrained.load(tmp_path / "ck")
    assert loaded.embedding_dim == 5
    embedding = loaded.embed(adata, key_added=None, progress=False)
    np.testing.assert_allclose(embedding, axes.apply(pooled), atol=1e-5)
    assert loaded.same_start().axes is None  # the control is the untrained model as it was
    narrow = EmbeddingAxes.fit(pooled[:, :7], 3)
    with pytest.raises(InputDataError, match="7-wide"):
        Pretrained(base.model, base.tokenizer, axes=narrow)
