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


def test_input_settings_are_one_section_nested_everywhere_and_old_keys_move_into_it():
    from sc_fm.config import InputSettings

    cfg = load_config(overrides=["embed.batch_key=plate", "explain.batch_cells=8", "finetune.min_gene_overlap=0.3",
                                 "adapt.input.min_genes_mapped=40", "benchmark.min_gene_overlap=0.5"])
    assert cfg.embed.input == InputSettings(batch_key="plate")
    assert cfg.explain.input.batch_cells == 8 and cfg.finetune.input.min_gene_overlap == 0.3
    assert cfg.adapt.input.min_genes_mapped == 40 and cfg.benchmark.input.min_gene_overlap == 0.5
    assert cfg.finetune.batch_cells == 16  # the training step's cells, not the input's
    both = load_config(overrides=["embed.batch_key=old", "embed.input.batch_key=new"])
    assert both.embed.input.batch_key == "new"
    with pytest.raises(ConfigError, match="explain.input.min_gene_overlap must be in"):
        load_config(overrides=["explain.min_gene_overlap=0"])
    with pytest.raises(ConfigError, match="embed.input.min_genes_mapped must be at least 1"):
        load_config(overrides=["embed.input.min_genes_mapped=0"])


def test_an_empty_mapping_override_clears_a_saved_one():
    saved = {"data": {"exclude": {"dataset": ["a", "b"]}, "num_workers": 1}}
    assert load_config(None, ["data.exclude={}"], base=saved).data.exclude == {}
    assert load_config(None, ["data.num_workers=0"], base=saved).data.exclude == {"dataset": ["a", "b"]}
    assert load_config(None, ["data={}"], base=saved).data.num_workers == 1  # a whole section is kept
