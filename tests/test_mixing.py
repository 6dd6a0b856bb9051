"""Cross-batch neighbour attraction: mutual nearest neighbours across batches pulled together."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sc_fm.batch import LOSS, MIXING_LOSS
from sc_fm.config import ModelConfig, TokenizerConfig
from sc_fm.errors import ConfigError
from sc_fm.model import MaskedGeneTransformer
from sc_fm.model.mixing import CrossBatchNeighbours, same_batch
from sc_fm.tokenize import CellTokenizer

SMALL = ModelConfig(n_layers=1, d_model=32, n_heads=2, d_ff=64, attention="math", cell_latent=8)
A, B = 1, 2  # condition ids of two batches (0 is <unk>)


def _bank(points: list[tuple[float, float]], batches: list[int], k: int = 1) -> CrossBatchNeighbours:
    mixing = CrossBatchNeighbours(2, 1, bank=2 * len(points), k=k)
    mixing.loss(torch.tensor(points), torch.tensor(batches)[:, None])
    return mixing


def test_a_batch_is_every_condition_key_together():
    ids = torch.tensor([[1, 2], [2, 1], [1, 1], [2, 1]])
    assert same_batch(ids, ids).tolist() == [[True, False, False, False], [False, True, False, True],
                                             [False, False, True, False], [False, True, False, True]]


def test_only_mutual_pairs_across_batches_are_pulled_by_their_offset():
    # bank: batch A at x=0 and x=10, batch B at x=0.5 and x=20 (one bank pass, nothing pulled yet)
    mixing = _bank([(0.0, 0.0), (10.0, 0.0), (0.5, 0.0), (20.0, 0.0)], [A, A, B, B])
    # three new cells of batch A: 0.9 is B@0.5's nearest A (mutual), 15 is B@20's nearest A
    # (mutual), 30's nearest B is B@20, whose nearest A is 15, so 30 is not pulled
    cells = torch.tensor([[0.9, 0.0], [15.0, 0.0], [30.0, 0.0]], requires_grad=True)
    loss = mixing.loss(cells, torch.full((3, 1), A))
    expected = ((0.4 ** 2) / 2 + (5.0 ** 2) / 2 + 0.0) / 3  # per dimension, over cells (k=1: no smoothing)
    assert float(loss.detach()) == pytest.approx(expected)
    loss.backward()
    want = torch.tensor([[2 * 0.4 / 2 / 3, 0.0], [2 * -5.0 / 2 / 3, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(cells.grad, want)  # towards the partner; the bank is detached


def test_a_cell_moves_by_the_mean_shift_of_its_own_batch_neighbours():
    mixing = CrossBatchNeighbours(2, 1, bank=4, k=2)
    mixing.bank[:] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.5, 0.0]])
    mixing.bank_shift[:] = torch.tensor([[1.0, 0.0], [0.0, 0.0], [5.0, 5.0], [9.0, 9.0]])
    mixing.bank_conditions[:] = torch.tensor([[A], [A], [A], [B]])
    mixing.written = 4
    # the two nearest of batch A are x=0 and x=1 (batch B's x=0.5 is nearer, but another batch)
    torch.testing.assert_close(mixing._smoothed(torch.tensor([[0.4, 0.0]]), torch.tensor([[A]])),
                               torch.tensor([[0.5, 0.0]]))


def test_a_bank_of_one_batch_or_unknown_cells_adds_exactly_nothing():
    mixing = _bank([(0.0, 0.0), (1.0, 0.0)], [A, A])
    same = torch.tensor([[0.5, 0.0]], requires_grad=True)
    assert float(mixing.loss(same, torch.tensor([[A]])).detach()) == 0.0
    unknown = torch.tensor([[5.0, 5.0]], requires_grad=True)
    assert float(mixing.loss(unknown, torch.tensor([[0]])).detach()) == 0.0
    assert not (mixing.bank == torch.tensor([5.0, 5.0])).all(dim=1).any()  # not remembered either


def test_the_bank_keeps_the_latest_cells_first_in_first_out():
    mixing = CrossBatchNeighbours(1, 1, bank=4, k=1)
    for start in (0, 3, 6):
        mixing.loss(torch.arange(start, start + 3, dtype=torch.float32)[:, None], torch.full((3, 1), A))
    assert sorted(mixing.bank[:, 0].tolist()) == [5.0, 6.0, 7.0, 8.0]


def test_mixing_joins_the_training_loss_only_and_is_not_a_weight(tiny_store):
    tokenizer = CellTokenizer.from_stores(TokenizerConfig(max_len=32), [tiny_store])
    torch.manual_seed(0)
    plain = MaskedGeneTransformer(SMALL, **tokenizer.model_inputs)
    model = MaskedGeneTransformer(dataclasses.replace(SMALL, cell_mixing_weight=3.0, cell_mixing_bank=64),
                                  **tokenizer.model_inputs)
    model.start_from(plain)  # the bank is working memory: no stray or missing keys
    assert set(model.state_dict()) == set(plain.state_dict())
    parts = []
    for shard in (0, 1):  # the studies (and so the assays) differ between the two shards
        indptr, indices, data = tiny_store.read_rows(shard, 0, 12)
        conditions = {}
        for key in tokenizer.config.condition_keys:
            codes, categories = tiny_store.shard_obs(shard, key, 0, 12)
            conditions[key] = np.asarray(categories, dtype=object)[codes]
        parts.append(tokenizer.encode_rows(indptr, indices, data, conditions,
                                           rng=np.random.default_rng(shard), with_expression=True))
    assert len({tuple(p.condition_ids[0].tolist()) for p in parts}) == 2  # two batches
    batch = tokenizer.mask_and_pack(parts, np.random.default_rng(0), range(24))
    with torch.no_grad():
        evaluated = model.eval()(batch)
    assert float(evaluated[MIXING_LOSS]) == 0.0 and model.mixing.written == 0
    torch.manual_seed(1)
    first = model.train()(batch)  # the bank is empty before it
    assert float(first[MIXING_LOSS].detach()) == 0.0 and model.mixing.written > 0
    torch.manual_seed(1)
    second = model(batch)
    assert float(second[MIXING_LOSS].detach()) > 0  # the bank now holds both batches
    torch.manual_seed(1)
    base = plain.train()(batch)
    torch.testing.assert_close(second[LOSS], base[LOSS] + 3.0 * second[MIXING_LOSS])


def test_mixing_settings_are_checked():
    with pytest.raises(ConfigError, match="cell_mixing_weight"):
        ModelConfig(cell_mixing_weight=-1.0)
    with pytest.raises(ConfigError, match="cell_mixing_bank"):
        ModelConfig(cell_mixing_k=10, cell_mixing_bank=5)
