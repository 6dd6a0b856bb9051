"""The typed config tree: YAML + dotted overrides, model presets, clear errors."""

import pytest

from sc_fm.config import RunConfig, TokenizerConfig, load_config, save_config, section_from_dict, to_dict
from sc_fm.errors import ConfigError


def test_overrides_and_presets(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  size: small\ntrain:\n  max_steps: 5\n")
    cfg = load_config(path, ["train.max_steps=7", "data.stores=[a.zarr,b.zarr]", "train.lr=3e-4"])
    assert cfg.train.max_steps == 7
    assert cfg.data.stores == ["a.zarr", "b.zarr"]
    assert cfg.train.lr == pytest.approx(3e-4)
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.d_ff) == (6, 256, 4, 512)


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(None, ["model.size=tiny", "tokenizer.scheme=bin"])
    save_config(cfg, tmp_path / "config.yaml")
    assert to_dict(load_config(tmp_path / "config.yaml")) == to_dict(cfg)
    tok = section_from_dict(TokenizerConfig, to_dict(cfg.tokenizer))
    assert tok == cfg.tokenizer


@pytest.mark.parametrize("override, message", [
    (["train.max_stepz=3"], "unknown key train.max_stepz"),
    (["tokenizer.scheme=words"], "not one of"),
    (["train.max_steps=many"], "must be int"),
    (["train.global_batch_cells=50", "train.micro_batch_cells=32"], "not a multiple"),
    (["model.d_model=100", "model.n_heads=3"], "not divisible"),
    (["nokey"], "KEY=VALUE"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_defaults_are_valid():
    assert isinstance(load_config(), RunConfig)
