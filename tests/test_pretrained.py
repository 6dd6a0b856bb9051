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


def test_a_directory_saved_before_the_cell_objective_loads_with_its_old_meaning(tiny_store, tmp_path):
    import json

    tokenizer = CellTokenizer.from_stores(TokenizerConfig(max_len=64), [tiny_store])
    old = ModelConfig(n_layers=1, d_model=32, n_heads=2, d_ff=64, cell_objective="none", encoder_conditions=True,
                      pooling="cls", positional=None)
    torch.manual_seed(0)
    Pretrained(MaskedGeneTransformer(old, **tokenizer.model_inputs), tokenizer).save(tmp_path / "old")
    meta_path = tmp_path / "old" / "model_config.json"
    meta = json.loads(meta_path.read_text())
    for key in ("encoder_conditions", "cell_objective", "cell_loss_weight", "cell_latent", "cell_kl_weight",
                "token_loss_weight", "pooling"):
        meta["config"].pop(key)  # what an older sc_fm wrote
    meta_path.write_text(json.dumps(meta))
    tokenizer.vocab.save(tmp_path / "old" / "vocab.tsv")  # older directories also held a top-level copy
    loaded = Pretrained.load(tmp_path / "old")
    assert loaded.model.config == old and loaded.model.decoder is None and loaded.model.conditions.n_keys == 2


def test_a_directory_saved_before_the_embedding_choice_keeps_embedding_its_bottleneck(tiny_store, tmp_path):
    import json

    tokenizer = CellTokenizer.from_stores(TokenizerConfig(max_len=64), [tiny_store])
    before = ModelConfig(n_layers=1, d_model=32, n_heads=2, d_ff=64, cell_latent=8, cell_embedding="latent")
    torch.manual_seed(0)
    Pretrained(MaskedGeneTransformer(before, **tokenizer.model_inputs), tokenizer).save(tmp_path / "before")
    meta_path = tmp_path / "before" / "model_config.json"
    meta = json.loads(meta_path.read_text())
    for key in ("cell_embedding", "cell_adversary_weight", "gene_init", "gene_init_cells"):
        meta["config"].pop(key)
    meta_path.write_text(json.dumps(meta))
    loaded = Pretrained.load(tmp_path / "before")
    assert loaded.model.config.cell_embedding == "latent" and loaded.model.embedding_dim == 8
    assert loaded.model.adversary is None
