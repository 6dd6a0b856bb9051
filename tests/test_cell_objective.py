"""The cell-level objective: the cell's whole expression decoded from its embedding and conditions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats
import torch

from sc_fm.batch import (ADVERSARY_LOSS, EXPRESSION_COUNTS, EXPRESSION_GENES, EXPRESSION_LOSS, EXPRESSION_OFFSETS,
                         LOSS)
from sc_fm.config import ModelConfig, TokenizerConfig
from sc_fm.errors import ConfigError, InputDataError
from sc_fm.model import MaskedGeneTransformer
from sc_fm.model.adversary import ConditionAdversary
from sc_fm.model.decoder import dense_counts, negative_binomial_log_prob
from sc_fm.tokenize import CellTokenizer
from sc_fm.vocab import N_SPECIAL

SMALL = ModelConfig(n_layers=1, d_model=32, n_heads=2, d_ff=64, attention="math", cell_latent=8)


def test_negative_binomial_matches_scipy():
    x = torch.tensor([0.0, 1.0, 5.0, 40.0])
    mu = torch.tensor([0.5, 2.0, 4.0, 30.0])
    theta = torch.tensor([0.7, 3.0, 10.0, 2.5])
    expected = scipy.stats.nbinom.logpmf(x.numpy(), theta.numpy(), (theta / (theta + mu)).numpy())
    np.testing.assert_allclose(negative_binomial_log_prob(x, mu, theta).numpy(), expected, rtol=1e-5)


def test_dense_counts_places_every_value():
    offsets, genes, counts = torch.tensor([0, 2, 2, 3]), torch.tensor([4, 1, 0]), torch.tensor([3.0, 1.0, 7.0])
    dense = dense_counts(offsets, genes, counts, 5)
    expected = torch.zeros(3, 5)
    expected[0, 4], expected[0, 1], expected[2, 0] = 3.0, 1.0, 7.0
    assert torch.equal(dense, expected)


@pytest.fixture(scope="module")
def tokenizer(tiny_store):
    return CellTokenizer.from_stores(TokenizerConfig(max_len=32), [tiny_store])


def _batch(tokenizer, store, n=24, rng=0):
    indptr, indices, data = store.read_rows(0, 0, n)
    cells = tokenizer.encode_rows(indptr, indices, data, {k: store.obs_values(k)[:n] for k in
                                                          tokenizer.config.condition_keys},
                                  rng=np.random.default_rng(rng), with_expression=True)
    return tokenizer.mask_and_pack(cells, np.random.default_rng(rng), range(n)), (indptr, indices, data)


def test_cells_carry_their_whole_count_row_as_the_target(tokenizer, tiny_store):
    batch, (indptr, indices, data) = _batch(tokenizer, tiny_store)
    rows = sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, tokenizer.vocab.n_genes))
    dense = dense_counts(batch[EXPRESSION_OFFSETS], batch[EXPRESSION_GENES], batch[EXPRESSION_COUNTS],
                         tokenizer.vocab.n_tokens)
    np.testing.assert_array_equal(dense[:, N_SPECIAL:].numpy(), rows.toarray())  # every gene, not the context
    assert (batch["cu_seqlens"].diff() <= 32).all() and rows.getnnz(axis=1).max() > 32


def test_downsampling_thins_the_input_but_not_the_target(tiny_store):
    indptr, indices, data = tiny_store.read_rows(0, 0, 40)
    plain = CellTokenizer.from_stores(TokenizerConfig(max_len=512), [tiny_store])
    thinned = CellTokenizer.from_stores(TokenizerConfig(max_len=512, downsample_prob=1.0,
                                                        downsample_min_fraction=0.3), [tiny_store])
    a = plain.encode_rows(indptr, indices, data, {}, rng=np.random.default_rng(1), with_expression=True)
    b = thinned.encode_rows(indptr, indices, data, {}, rng=np.random.default_rng(1), with_expression=True)
    assert b.lengths.sum() < a.lengths.sum()  # fewer genes detected after thinning
    for x, y in zip(a.expression.arrays, b.expression.arrays):
        np.testing.assert_array_equal(x, y)
    at_inference = thinned.encode_rows(indptr, indices, data, {})
    reference = plain.encode_rows(indptr, indices, data, {})
    np.testing.assert_array_equal(at_inference.gene_ids, reference.gene_ids)  # never without an rng


def test_thinning_draws_are_the_binomial_inverse_cdf_of_their_uniforms():
    from sc_fm.kernels import thin_rows, thinning_draws

    rng = np.random.default_rng(0)  # one cell per count, every cell thinned at its own fraction
    counts = np.concatenate([np.ones(2000, np.int64), rng.integers(2, 40, 4000), rng.integers(40, 1000, 500)])
    p = rng.uniform(0.2, 1.0, len(counts))
    p[:50] = 1.0
    indptr, genes, thinned = np.arange(len(counts) + 1), np.zeros(len(counts), np.int32), np.ones(len(counts), bool)
    assert thinning_draws(indptr, counts, thinned) == len(counts)  # one uniform per count up to 1,000
    uniforms = rng.random(len(counts))
    out_indptr, out_genes, out_counts = np.empty_like(indptr), np.empty_like(genes), np.empty_like(counts)
    written = thin_rows(indptr, genes, counts, thinned, p, uniforms, out_indptr, out_genes, out_counts)
    kept = np.zeros_like(counts)
    kept[np.diff(out_indptr) == 1] = out_counts[:written]
    assert (out_counts[:written] > 0).all()  # cells thinned to 0 of a gene lose that nonzero
    # p <= 0.5 walks successes, p > 0.5 failures: each the inverse CDF at its uniform
    expected = np.where(p <= 0.5, scipy.stats.binom.ppf(uniforms, counts, p),
                        counts - scipy.stats.binom.ppf(uniforms, counts, 1 - p))
    assert (kept == expected).mean() > 0.999  # float rounding at a CDF step may move a rare draw by one
    assert np.abs(kept - expected).max() <= 1 and (kept[:50] == counts[:50]).all()
    # a count over 1,000 takes a uniform per chunk; unthinned cells take none
    assert thinning_draws(np.array([0, 2, 3, 5]), np.array([2500, 1, 7, 4, 4]), np.array([True, False, True])) == 6


def test_thinned_counts_follow_the_binomial_of_their_cell_fraction(tiny_store):
    cfg = TokenizerConfig(downsample_prob=1.0, downsample_min_fraction=0.5)
    thinned = CellTokenizer.from_stores(cfg, [tiny_store])
    indptr = np.arange(0, 3001 * 4, 4)  # 3,000 cells of 4 genes, counts 1, 3, 20 and 2,000
    data = np.tile(np.array([1, 3, 20, 2000]), 3000)
    indices = np.tile(np.arange(4), 3000)
    out = sp.csr_matrix(thinned._downsampled(indptr, indices, data, np.random.default_rng(0))[::-1],
                        shape=(3000, 4))
    assert out.nnz < len(data) and (out.data > 0).all()  # the zeros thinning makes are dropped
    fraction = np.random.default_rng(0)
    fraction.random(3000)
    p = fraction.uniform(0.5, 1.0, 3000)
    out = out.toarray()
    for column, n in enumerate([1, 3, 20, 2000]):  # a 2,000 is drawn as two chunks of 1,000
        z = (out[:, column] - n * p) / np.sqrt(n * p * (1 - p))
        assert abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1, (n, z.mean(), z.std())


def test_model_learns_to_reconstruct_and_embeds_in_the_bottleneck(tokenizer, tiny_store):
    torch.manual_seed(0)
    model = MaskedGeneTransformer(SMALL, **tokenizer.model_inputs)
    assert model.embedding_dim == 32 and model.conditions.n_keys == 0  # conditions reach the decoder only
    batch, _ = _batch(tokenizer, tiny_store)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        out = model(batch)
        first = first if first is not None else float(out[EXPRESSION_LOSS].detach())
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert float(model(batch)[EXPRESSION_LOSS]) < 0.8 * first
    unmasked = tokenizer.mask_and_pack(tokenizer.encode_rows(*tiny_store.read_rows(0, 0, 5), {}), None, range(5))
    with torch.no_grad():
        pooled = model.embed(unmasked)
        assert pooled.shape == (5, 32)
        model.config.cell_embedding = "latent"  # the bottleneck mean instead
        assert model.embedding_dim == 8
        torch.testing.assert_close(model.embed(unmasked), model.decoder.mean(pooled))
    without_targets = {k: v for k, v in batch.items() if k != EXPRESSION_COUNTS}
    with pytest.raises(InputDataError, match="expression_counts"):
        model(without_targets)


def test_grown_conditions_start_as_unknown_in_the_decoder(tokenizer):
    torch.manual_seed(0)
    model = MaskedGeneTransformer(SMALL, **tokenizer.model_inputs)
    sizes = [s + 2 for s in tokenizer.model_inputs["condition_sizes"]]
    with torch.no_grad():
        model.decoder.offsets[0].weight.normal_()
    before = model.decoder.offsets[0].weight.clone()
    model.grow_conditions(sizes)
    after = model.decoder.offsets[0].weight
    assert after.shape[0] == sizes[0] and torch.equal(after[: before.shape[0]], before)
    assert torch.equal(after[-1], before[0]) and model.init_args["condition_sizes"] == sizes


def test_adversary_gradient_is_reversed_for_the_encoder_and_unknown_conditions_are_not_counted():
    torch.manual_seed(0)
    adversary = ConditionAdversary(4, [3])
    embedding = torch.randn(6, 4, requires_grad=True)
    ids = torch.tensor([[1], [2], [0], [1], [0], [2]])
    readable, added = adversary.loss(embedding, ids, 0.5)
    known = ids[:, 0] > 0
    logits = adversary.classifiers[0](embedding[known])
    assert torch.allclose(readable, torch.nn.functional.cross_entropy(logits, ids[known, 0]))
    assert torch.allclose(added, 0.5 * readable)
    readable.backward()
    reversed_grad = embedding.grad.clone()
    embedding.grad = None
    torch.nn.functional.cross_entropy(adversary.classifiers[0](embedding[known]), ids[known, 0]).backward()
    assert torch.allclose(reversed_grad, -embedding.grad)  # the encoder is pushed to confuse it
    assert torch.equal(reversed_grad[~known], torch.zeros(2, 4))
    nothing_known = torch.zeros(6, 1, dtype=torch.long)
    assert float(adversary.loss(embedding, nothing_known, 1.0)[0].detach()) == 0.0


def test_confusion_trains_the_classifier_on_the_detached_embedding_and_the_encoder_towards_the_prior():
    """The classifier's gradient is plain cross-entropy; the encoder's is that of the cross-entropy
    between the (frozen) classifier's prediction and the batch's category frequencies."""
    torch.manual_seed(0)
    adversary = ConditionAdversary(4, [3])
    embedding = torch.randn(6, 4, requires_grad=True)
    ids = torch.tensor([[1], [2], [0], [1], [1], [2]])
    known = ids[:, 0] > 0
    readable, added = adversary.loss(embedding, ids, 2.0, "confusion")
    added.backward()
    encoder_grad = embedding.grad.clone()
    classifier_grads = [p.grad.clone() for p in adversary.parameters()]
    adversary.zero_grad()
    embedding.grad = None
    plain = torch.nn.functional.cross_entropy(adversary.classifiers[0](embedding[known].detach()), ids[known, 0])
    plain.backward()
    assert torch.allclose(readable, plain)
    for got, want in zip(classifier_grads, [p.grad for p in adversary.parameters()]):
        torch.testing.assert_close(got, want)  # the confusion term leaves the classifier alone
    prior = torch.tensor([0.0, 3 / 5, 2 / 5])
    log_p = torch.log_softmax(adversary.classifiers[0](embedding[known]), dim=-1)
    (2.0 * -(log_p * prior).sum(-1).mean()).backward()
    torch.testing.assert_close(encoder_grad, embedding.grad)
    assert torch.equal(encoder_grad[~known], torch.zeros(1, 4))


def test_the_adversary_learns_at_its_own_rate():
    from sc_fm.train.engines import param_groups

    model = torch.nn.ModuleDict({"encoder": torch.nn.Linear(4, 4), "adversary": ConditionAdversary(4, [2], 10.0)})
    groups = param_groups(model, 0.01, 1e-3)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in groups] == [
        (1e-3, 0.01, 1), (1e-3, 0.0, 1), (1e-2, 0.01, 2), (1e-2, 0.0, 2)]
    model["adversary"].grow([5])
    assert all(p.lr_scale == 10.0 for p in model["adversary"].parameters())  # new rows too


def test_adversary_joins_the_loss_grows_and_may_be_switched_on_for_adaptation(tokenizer, tiny_store):
    torch.manual_seed(0)
    plain = MaskedGeneTransformer(SMALL, **tokenizer.model_inputs)
    weighted = dataclasses.replace(SMALL, cell_adversary_weight=0.5)
    model = MaskedGeneTransformer(weighted, **tokenizer.model_inputs)
    model.start_from(plain)  # every weight but the adversary's comes from the start
    assert torch.equal(model.decoder.rates.weight, plain.decoder.rates.weight)
    batch, _ = _batch(tokenizer, tiny_store)
    with torch.no_grad():  # eval: the decoder reads the latent mean, no sampling draws
        out, base = model.eval()(batch), plain.eval()(batch)
    assert plain.adversary is None and float(base[ADVERSARY_LOSS]) == 0.0
    assert float(out[ADVERSARY_LOSS]) > 0
    torch.testing.assert_close(out[LOSS], base[LOSS] + 0.5 * out[ADVERSARY_LOSS])
    sizes = [s + 2 for s in tokenizer.model_inputs["condition_sizes"]]
    before = model.adversary.classifiers[0][-1].weight.clone()
    model.grow_conditions(sizes)
    after = model.adversary.classifiers[0][-1].weight
    assert after.shape[0] == sizes[0] and torch.equal(after[: before.shape[0]], before)
    other = MaskedGeneTransformer(dataclasses.replace(SMALL, d_model=64), **tokenizer.model_inputs)
    with pytest.raises(ConfigError, match="do not fit"):
        model.start_from(other)
