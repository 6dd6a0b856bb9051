"""``Pretrained``: model + tokenizer saved once, loaded once; embedding into AnnData."""

from __future__ import annotations

import numpy as np
import torch

from sc_fm.config import ModelConfig, TokenizerConfig
from sc_fm.model import MaskedGeneTransformer
from sc_fm.pretrained import Pretrained
from sc_fm.tokenize import CellTokenizer


def test_save_load_round_trip_with_tokenizer(tiny_store, tmp_path):
    tokenizer = CellTokenizer.from_stores(TokenizerConfig(max_len=64), [tiny_store])
    indptr, indices, data = tiny_store.read_rows(0, 0, 8)
    conditions = {key: tiny_store.obs_values(key)[:8] for key in tokenizer.config.condition_keys}
    cells = tokenizer.encode_rows(indptr, indices, data, conditions, with_expression=True)
    batch = tokenizer.mask_and_pack(cells, np.random.default_rng(0), range(8))
    torch.manual_seed(0)
    config = ModelConfig(n_layers=1, d_model=32, n_heads=2, d_ff=64)
    model = MaskedGeneTransformer(config, **tokenizer.model_inputs).eval()
    Pretrained(model, tokenizer).save(tmp_path / "final")

    pretrained = Pretrained.load(tmp_path / "final")
    loaded, loaded_tokenizer = pretrained.model, pretrained.tokenizer
    assert pretrained.vocab.hash == tokenizer.vocab.hash and pretrained.path == tmp_path / "final"
    assert loaded_tokenizer.model_inputs == tokenizer.model_inputs
    reloaded_batch = loaded_tokenizer.mask_and_pack(
        loaded_tokenizer.encode_rows(indptr, indices, data, conditions, with_expression=True),
        np.random.default_rng(0), range(8))
    assert all(torch.equal(batch[k], reloaded_batch[k]) for k in batch if torch.is_tensor(batch[k]))
    with torch.no_grad():
        out, again = model(batch), loaded(reloaded_batch)
    assert torch.isfinite(out["loss"]) and torch.equal(out["loss"], again["loss"])
    assert torch.equal(out["cell_embedding"], again["cell_embedding"])
    assert loaded.embed(tokenizer.mask_and_pack(cells, None, range(8))).shape == (8, 32)
