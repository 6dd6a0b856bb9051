"""CellTokenizer: exact encodings, invariances, parity with NumPy, masking, packing, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sc_fm.config import TokenizerConfig
from sc_fm.errors import ConfigError, InputDataError
from sc_fm.tokenize import CellTokenizer, TokenizedCells, check_vocabulary, to_padded, unpack
from sc_fm.vocab import CLS_ID, MASK_ID, N_SPECIAL, GeneVocab

N_GENES = 300
VOCAB = GeneVocab([f"ENSG{i:011d}" for i in range(N_GENES)], name="test")


def make_tokenizer(normalisers=None, conditions=None, **overrides) -> CellTokenizer:
    # the encoding rules alone: depth augmentation (its own test in test_cell_objective.py) off
    config = TokenizerConfig(**{"stats_group": "global", "condition_keys": [], "downsample_prob": 0.0, **overrides})
    rng = np.random.default_rng(0)
    normalisers = normalisers or {"global": {"all": rng.uniform(0.5, 5.0, N_GENES).astype(np.float32)}}
    return CellTokenizer(config, VOCAB, normalisers, conditions or {})


def random_counts(n_cells: int, seed: int = 0, density: float = 0.3) -> sp.csr_matrix:
    x = sp.random(n_cells, N_GENES, density=density, random_state=seed, format="csr")
    x.data = np.ceil(x.data * 30).astype(np.int32)
    x.sort_indices()
    return x


def encode(tok: CellTokenizer, x: sp.csr_matrix, rng=None, conditions=None, groups=None) -> TokenizedCells:
    return tok.encode_rows(x.indptr, x.indices, x.data, conditions or {}, groups, rng)


def test_rank_encoding_exact_values():
    tok = make_tokenizer({"global": {"all": np.r_[1.0, 2.0, 0.5, np.ones(N_GENES - 3)].astype(np.float32)}})
    cells = tok.encode_rows(np.array([0, 3]), np.array([0, 1, 2]), np.array([1, 4, 2]), {})
    # normalised = counts / 7 * 1e4; score = normalised / median -> gene 2 > gene 1 > gene 0
    assert cells[0].gene_ids.tolist() == [CLS_ID, N_SPECIAL + 2, N_SPECIAL + 1, N_SPECIAL + 0]
    expected = np.log1p(np.array([2 / 0.5, 4 / 2.0, 1 / 1.0]) / 7 * 1e4)
    np.testing.assert_allclose(cells[0].values, np.r_[-1.0, expected].astype(np.float32), rtol=1e-6)


@pytest.mark.parametrize("factor", [3, 10])
def test_rank_tokens_invariant_to_depth_scaling(factor):
    tok = make_tokenizer(max_len=64)
    x = random_counts(80)
    a, b = encode(tok, x), encode(tok, x * factor)
    np.testing.assert_array_equal(a.gene_ids, b.gene_ids)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-6)


def test_group_normalisers_cancel_assay_capture_factor():
    rng = np.random.default_rng(1)
    median = rng.uniform(0.5, 5.0, N_GENES)
    capture = rng.integers(1, 4, N_GENES)  # assay B captures each gene 1-3x as much
    normalisers = {"global": {"all": median.astype(np.float32)},
                   "assay": {"A": median.astype(np.float32), "B": (median * capture).astype(np.float32)}}
    x = random_counts(60, seed=2)
    x_b = (x @ sp.diags(capture)).tocsr()
    batch_aware = make_tokenizer(normalisers, stats_group="assay", max_len=50)
    a = encode(batch_aware, x, groups=["A"] * 60)
    b = encode(batch_aware, x_b, groups=["B"] * 60)
    np.testing.assert_array_equal(a.gene_ids, b.gene_ids)
    corpus_wide = make_tokenizer(normalisers, stats_group="global", max_len=50)
    assert not np.array_equal(encode(corpus_wide, x).gene_ids, encode(corpus_wide, x_b).gene_ids)


def test_unknown_group_value_falls_back_to_global():
    rng = np.random.default_rng(3)
    median = rng.uniform(0.5, 5.0, N_GENES).astype(np.float32)
    tok = make_tokenizer({"global": {"all": median}, "dataset": {"d1": median * 7}}, stats_group="dataset")
    glob = make_tokenizer({"global": {"all": median}})
    x = random_counts(10)
    np.testing.assert_array_equal(encode(tok, x, groups=[None] * 5 + ["unseen"] * 5).gene_ids,
                                  encode(glob, x).gene_ids)


def test_bin_scheme_matches_numpy_quantile_digitize():
    n_bins = 11
    tok = make_tokenizer(scheme="bin", n_bins=n_bins, stats_group="none", max_len=N_GENES + 1)
    x = random_counts(40, seed=4)
    cells = encode(tok, x)
    for i, cell in enumerate(cells):
        row = x[i]
        normalised = np.log1p(row.data / row.data.sum() * 1e4)
        bins = np.digitize(normalised, np.quantile(normalised, np.linspace(0, 1, n_bins - 1)))
        assert cell.gene_ids.tolist() == [CLS_ID] + (row.indices + N_SPECIAL).tolist()  # gene order
        np.testing.assert_array_equal(cell.values[1:], bins.astype(np.float32))


def test_bin_scheme_shuffles_genes_with_rng():
    tok = make_tokenizer(scheme="bin", stats_group="none", max_len=N_GENES + 1, condition_dropout=0.0)
    x = random_counts(5, seed=5)
    plain, shuffled = encode(tok, x), encode(tok, x, rng=np.random.default_rng(0))
    for p, s in zip(plain, shuffled):
        order = np.argsort(s.gene_ids[1:])
        np.testing.assert_array_equal(s.gene_ids[1:][order], p.gene_ids[1:])
        np.testing.assert_array_equal(s.values[1:][order], p.values[1:])
    assert not np.array_equal(plain.gene_ids, shuffled.gene_ids)


def test_top_context_keeps_highest_ranked_genes():
    tok = make_tokenizer(max_len=6)
    full = make_tokenizer(max_len=N_GENES + 1)
    x = random_counts(30, seed=6)
    short, long = encode(tok, x), encode(full, x)
    for s, l in zip(short, long):
        np.testing.assert_array_equal(s.gene_ids, l.gene_ids[:6])


def test_sample_context_with_unexpressed_genes():
    tok = make_tokenizer(max_len=20, context="sample", n_unexpressed=5)
    x = random_counts(50, seed=7)
    cells = encode(tok, x, rng=np.random.default_rng(1))
    for i, cell in enumerate(cells):
        genes = cell.gene_ids[1:] - N_SPECIAL
        assert len(cell.gene_ids) == 20 and len(set(genes)) == len(genes)
        expressed = np.isin(genes, x[i].indices)
        assert (~expressed).sum() == 5 and np.all(cell.values[1:][~expressed] == 0)
        scores = cell.values[1:][expressed]
        assert np.all(np.diff(scores) <= 0) and np.all(scores > 0)  # rank order among sampled
    again = encode(tok, x, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(cells.gene_ids, again.gene_ids)
    assert not np.array_equal(cells.gene_ids, encode(tok, x, rng=np.random.default_rng(2)).gene_ids)


def test_condition_ids_unknown_and_dropout():
    tok = make_tokenizer(conditions={"assay": ["a", "b"], "dataset": ["d"]},
                         condition_keys=["assay", "dataset"], condition_dropout=0.5)
    x = random_counts(2000, density=0.02)
    conditions = {"assay": ["b", None] * 1000, "dataset": ["d", "zzz"] * 1000}
    plain = encode(tok, x, conditions=conditions)
    np.testing.assert_array_equal(plain.condition_ids[:2], [[2, 1], [0, 0]])
    assert tok.model_inputs["condition_sizes"] == [3, 2]
    dropped = encode(tok, x, rng=np.random.default_rng(0), conditions=conditions)
    assert abs((dropped.condition_ids[::2] == 0).mean() - 0.5) < 0.03


def test_pack_unpack_and_padded_view():
    tok = make_tokenizer(max_len=40)
    x = random_counts(12, seed=8)
    cells = encode(tok, x)
    batch = tok.mask_and_pack(cells, None, np.arange(100, 112))
    assert batch["cu_seqlens"].dtype == torch.int32 and batch["max_seqlen"] == int(cells.lengths.max())
    for cell, unpacked in zip(cells, unpack(batch)):
        np.testing.assert_array_equal(unpacked["gene_ids"].numpy(), cell.gene_ids)
        np.testing.assert_array_equal(unpacked["values"].numpy(), cell.values)
    padded = to_padded(batch)
    assert padded["gene_ids"].shape == (12, batch["max_seqlen"])
    np.testing.assert_array_equal(padded["gene_ids"][~padded["padding_mask"]].numpy(), cells.gene_ids)
    assert torch.all(padded["gene_ids"][padded["padding_mask"]] == 0)
    assert batch["cell_index"].tolist() == list(range(100, 112))


def test_take_reorders_whole_cells():
    cells = encode(make_tokenizer(max_len=30), random_counts(6, seed=15))
    taken = cells.take(np.array([4, 0, 4]))
    for got, want in zip(taken, [cells[4], cells[0], cells[4]]):
        np.testing.assert_array_equal(got.gene_ids, want.gene_ids)
        np.testing.assert_array_equal(got.values, want.values)


def test_gather_across_parts_equals_joining_then_picking():
    tok = make_tokenizer(max_len=30)
    parts = [encode(tok, random_counts(n, seed=20 + n)) for n in (5, 1, 7)]
    parts.insert(1, parts[0][0:0])  # a part without cells (a block its filters emptied)
    joined = TokenizedCells.concat(parts)
    rows = np.random.default_rng(0).permutation(13)[:10]
    gathered = TokenizedCells.gather(parts, rows)
    assert gathered.gene_ids.dtype == np.int32 and gathered.values.dtype == np.float32
    assert len(gathered) == 10 and gathered.offsets[-1] == joined.lengths[rows].sum()
    np.testing.assert_array_equal(gathered.condition_ids, joined.condition_ids[rows])
    for got, row in zip(gathered, rows):
        np.testing.assert_array_equal(got.gene_ids, joined[int(row)].gene_ids)
        np.testing.assert_array_equal(got.values, joined[int(row)].values)
    empty = TokenizedCells.gather(parts, np.zeros(0, np.int64))
    assert len(empty) == 0 and empty.gene_ids.size == 0 and empty.offsets.tolist() == [0]


def test_list_of_cells_packs_like_flat_cells():
    tok = make_tokenizer(max_len=30)
    cells = encode(tok, random_counts(6, seed=9))
    a = tok.mask_and_pack(cells, np.random.default_rng(5), range(6))
    b = tok.mask_and_pack(list(cells), np.random.default_rng(5), range(6))
    for key in ("gene_ids", "values", "labels", "target_values", "cu_seqlens"):
        assert torch.equal(a[key], b[key])


def test_bert_masking_statistics():
    tok = make_tokenizer(max_len=N_GENES + 1, mask_ratio=0.15)
    cells = encode(tok, random_counts(400, seed=10))
    batch = tok.mask_and_pack(cells, np.random.default_rng(0), range(400))
    original = torch.from_numpy(cells.gene_ids).long()
    genes = original >= N_SPECIAL
    selected = batch["labels"] != -100
    assert not selected[~genes].any()  # <cls> never masked
    assert abs(selected[genes].float().mean().item() - 0.15) < 0.01
    assert torch.equal(batch["labels"][selected], original[selected])
    as_mask = batch["gene_ids"][selected] == MASK_ID
    unchanged = batch["gene_ids"][selected] == original[selected]
    assert abs(as_mask.float().mean().item() - 0.8) < 0.02
    assert abs(unchanged.float().mean().item() - 0.1) < 0.02  # (+ rare random hits on itself)
    hidden = batch["values"] == -1.0
    assert torch.equal(hidden & genes, batch["gene_ids"] == MASK_ID)
    np.testing.assert_array_equal(batch["target_values"][hidden & genes].numpy(),
                                  cells.values[(hidden & genes).numpy()])
    assert torch.equal(batch["gene_ids"][~selected], original[~selected])


def test_value_masking_hides_values_only():
    tok = make_tokenizer(max_len=N_GENES + 1, mask_mode="value", mask_ratio=0.3)
    cells = encode(tok, random_counts(200, seed=11))
    batch = tok.mask_and_pack(cells, np.random.default_rng(0), range(200))
    assert torch.equal(batch["gene_ids"], torch.from_numpy(cells.gene_ids).long())
    assert torch.all(batch["labels"] == -100)
    targets = batch["target_values"] != -100
    assert abs(targets.float().mean().item() - 0.3 * (1 - 200 / len(cells.gene_ids))) < 0.02
    assert torch.all(batch["values"][targets] == -1.0)
    np.testing.assert_array_equal(batch["target_values"][targets].numpy(), cells.values[targets.numpy()])


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(12)
    normalisers = {"global": {"all": rng.uniform(1, 2, N_GENES).astype(np.float32)},
                   "dataset": {"x": rng.uniform(1, 2, N_GENES).astype(np.float32)}}
    tok = make_tokenizer(normalisers, conditions={"assay": ["p", "q"]}, stats_group="dataset",
                         condition_keys=["assay"], scheme="bin")
    tok.save(tmp_path / "tok")
    loaded = CellTokenizer.load(tmp_path / "tok")
    x = random_counts(20, seed=13)
    kwargs = dict(conditions={"assay": ["q"] * 20}, groups=["x"] * 10 + [None] * 10)
    a, b = encode(tok, x, **kwargs), encode(loaded, x, **kwargs)
    for key in ("gene_ids", "values", "offsets", "condition_ids"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert loaded.model_inputs == tok.model_inputs == {
        "n_tokens": N_GENES + N_SPECIAL, "value_encoding": "bin", "n_bins": 51, "condition_sizes": [3]}


def test_from_stores_builds_group_normalisers(tiny_store):
    config = TokenizerConfig(stats_group="assay", condition_keys=["assay", "dataset"])
    tok = CellTokenizer.from_stores(config, [tiny_store])
    assays = sorted(tiny_store.categories["assay"])
    assert sorted(tok.normalisers["assay"]) == assays
    assert tok.condition_vocabs["dataset"] == sorted(tiny_store.categories["dataset"])
    for table in tok.normalisers["assay"].values():
        assert table.shape == (tiny_store.n_genes,) and np.all(np.isfinite(table)) and np.all(table > 0)


def test_bad_inputs_raise_specific_errors(tiny_store):
    tok = make_tokenizer()
    with pytest.raises(InputDataError, match="non-negative"):
        tok.encode_rows(np.array([0, 1]), np.array([0]), np.array([-1.0]), {})
    with pytest.raises(InputDataError, match="outside the vocabulary"):
        tok.encode_rows(np.array([0, 1]), np.array([N_GENES]), np.array([1]), {})
    with pytest.raises(InputDataError, match="no statistics for group 'donor'"):
        CellTokenizer.from_stores(TokenizerConfig(stats_group="donor"), [tiny_store])
    with pytest.raises(ConfigError, match="sequencing_lane"):
        CellTokenizer.from_stores(TokenizerConfig(condition_keys=["sequencing_lane"]), [tiny_store])
    with pytest.raises(InputDataError, match="differs from the tokenizer"):
        check_vocabulary(tiny_store, VOCAB)
    with pytest.raises(ConfigError, match="n_unexpressed"):
        make_tokenizer(max_len=10, n_unexpressed=9)


def test_store_assay_statistics_remove_a_simulated_capture_effect(tmp_path):
    """Twin cells, one per assay, differing only by a per-gene capture factor: tokens built
    with the store's per-assay medians agree far better than with corpus-wide ones."""
    from sc_fm.stats import GeneStatsAccumulator
    from sc_fm.store import GLOBAL_GROUP, CorpusStore, StoreWriter

    rng = np.random.default_rng(14)
    base = rng.lognormal(0.0, 1.0, N_GENES)
    x_a = sp.csr_matrix(rng.poisson(base * rng.lognormal(0.0, 0.5, (400, N_GENES))).astype(np.int32))
    capture = rng.integers(1, 6, N_GENES)
    x_b = (x_a @ sp.diags(capture)).tocsr().astype(np.int32)
    stats = {GLOBAL_GROUP: {"all": GeneStatsAccumulator(N_GENES)},
             "assay": {a: GeneStatsAccumulator(N_GENES) for a in "AB"}}
    with StoreWriter(tmp_path / "twins.zarr", VOCAB) as writer:
        for assay, x in (("A", x_a), ("B", x_b)):
            x.sort_indices()
            writer.add_shard(x.indptr, x.indices, x.data, {"assay": np.array([assay] * 400)}, {}, "twins")
            for acc in (stats[GLOBAL_GROUP]["all"], stats["assay"][assay]):
                acc.update(x.indptr, x.indices, x.data)
        writer.commit(stats, [])
    store = CorpusStore(tmp_path / "twins.zarr")

    def top_overlap(stats_group: str) -> float:
        tok = CellTokenizer.from_stores(TokenizerConfig(stats_group=stats_group, max_len=21,
                                                        condition_keys=["assay"]), [store])
        a = encode(tok, x_a, groups=["A"] * 400)
        b = encode(tok, x_b, groups=["B"] * 400)
        return np.mean([len(set(p.gene_ids) & set(q.gene_ids)) / 21 for p, q in zip(a, b)])

    batch_aware, corpus_wide = top_overlap("assay"), top_overlap("global")
    assert batch_aware > 0.95 and corpus_wide < 0.5, (batch_aware, corpus_wide)  # measured 0.99, 0.36


def test_the_medians_scale_is_recorded_in_the_store_and_must_match_target_sum(tiny_store, tmp_path):
    import json
    import shutil

    from sc_fm.config import CP10K
    from sc_fm.store import CorpusStore

    assert tiny_store.stats_target_sum == CP10K
    with pytest.raises(ConfigError, match=r"tokenizer.target_sum=1000 but the gene medians are at 10000 .*"
                                          r"set tokenizer.target_sum=10000"):
        CellTokenizer.from_stores(TokenizerConfig(target_sum=1e3), [tiny_store])
    older = tmp_path / "older.zarr"  # a store written before the scale was recorded
    shutil.copytree(tiny_store.path, older)
    root = json.loads((older / "zarr.json").read_text())
    del root["attributes"]["stats_target_sum"]
    (older / "zarr.json").write_text(json.dumps(root))
    assert CorpusStore(older).stats_target_sum == 1e4
    tokenizer = CellTokenizer.from_stores(TokenizerConfig(), [CorpusStore(older)])
    mismatched = CellTokenizer(TokenizerConfig(target_sum=5e3), tokenizer.vocab, tokenizer.normalisers,
                               tokenizer.condition_vocabs)
    with pytest.raises(ConfigError, match="the input's own normalisers"):
        mismatched.with_group_normalisers(iter([]))
