"""Counts past the store's int32 range are refused, never wrapped."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from data_pipelines import SourceSpec, prepare
from sc_fm.errors import InputDataError
from sc_fm.store import ShardAppender
from test_ingest_formats import human_atlas, permissive

HUGE = [3_000_000_000, 2**32 + 7]


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.float64])
def test_prepare_refuses_counts_above_int32(tmp_path, value, dtype):
    adata = human_atlas(n_cells=20)
    x = sp.csr_matrix(adata.X, dtype=dtype)
    x.data[x.indptr[4]] = value  # cell BC00004
    adata.X = x
    with pytest.raises(InputDataError, match="above 2,147,483,647") as err:
        prepare([SourceSpec(adata=adata, dataset="big")], tmp_path / "s.zarr", permissive(), progress=False)
    assert f"{value:,}" in err.value.message and "BC00004" in err.value.message
    assert "Fix:" in err.value.message
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("value, dtype", [(v, t) for v in HUGE for t in (np.int64, np.float64)]
                         + [(3_000_000_000, np.uint32)])
def test_shard_writer_refuses_instead_of_wrapping(tmp_path, value, dtype):
    data = np.array([1, 5, value, 2], dtype=dtype)
    appender = ShardAppender(tmp_path, "s")
    with pytest.raises(InputDataError, match="outside the stored int32 range"):
        appender.append(np.array([0, 2, 4]), np.array([0, 1, 0, 3], np.int32), data, {}, {})


def test_largest_int32_and_large_non_integers_still_store(tmp_path):
    appender = ShardAppender(tmp_path, "a")
    appender.append(np.array([0, 2]), np.array([0, 1], np.int32), np.array([1, 2**31 - 1], np.int64), {}, {})
    assert appender._data.array.dtype == np.int32
    floats = ShardAppender(tmp_path, "b")
    floats.append(np.array([0, 2]), np.array([0, 1], np.int32), np.array([0.5, 3.5e9]), {}, {})
    assert floats._data.array.dtype == np.float32  # not counts: no int32 range to keep
