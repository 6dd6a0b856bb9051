"""The model's own files: ``model.safetensors`` (weights) and ``model_config.json``.

Weights go through safetensors (no pickle, tied weights stored once); the JSON holds the
``ModelConfig`` and the constructor arguments, so a directory rebuilds the same model with no
other input. The vocabulary and tokenizer beside them belong to ``sc_fm.pretrained``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from sc_fm.config import ModelConfig, section_from_dict
from sc_fm.errors import InputDataError

FORMAT = "sc_fm.model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
START_FILE = "start.safetensors"  # the untrained weights the first optimiser step was applied to
CONFIG_FILE = "model_config.json"
INIT_ARGS = ("n_tokens", "value_encoding", "n_bins", "condition_sizes")
# What a directory saved before the cell-level objective (and its adversary) means by the keys it lacks.
LEGACY_MODEL_KEYS = {"pooling": "cls", "encoder_conditions": True, "cell_objective": "none",
                     "cell_adversary_weight": 0.0, "cell_embedding": "latent"}


def required_file(directory: Path, name: str) -> Path:
    """``directory/name``, or an error saying which pretrained directory lacks it."""
    path = directory / name
    if not path.exists():
        raise InputDataError(f"{name} is missing", str(directory),
                             "pass a directory written by Pretrained.save (a run's final/ or "
                             "checkpoints/step_N/)")
    return path


def write_weights(model: nn.Module, path: str | Path) -> None:
    """``model``'s weights alone (tied weights once) into a safetensors file."""
    save_model(model, str(path))


def write_model(model: nn.Module, directory: str | Path) -> None:
    """Save ``model`` (which has ``config`` and ``init_args``) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_weights(model, directory / WEIGHTS_FILE)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "config": dataclasses.asdict(model.config), **model.init_args}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_model_config(directory: str | Path) -> tuple[ModelConfig, dict]:
    """The ``ModelConfig`` and constructor arguments stored in ``directory``."""
    path = required_file(Path(directory), CONFIG_FILE)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputDataError(f"not valid JSON ({err})", str(path),
                             "re-save the model with save_pretrained") from err
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise InputDataError(f"not an {FORMAT} v{FORMAT_VERSION} config (format={meta.get('format')}, "
                             f"version={meta.get('format_version')})", str(path),
                             "load it with the sc_fm version that wrote it")
    missing = [key for key in ("config", *INIT_ARGS) if key not in meta]
    if missing:
        raise InputDataError(f"{missing[0]!r} is missing from the model config", str(path),
                             "re-save the model with save_pretrained")
    config = section_from_dict(ModelConfig, {**LEGACY_MODEL_KEYS, **meta["config"]})
    return config, {key: meta[key] for key in INIT_ARGS}


def load_weights(model: nn.Module, directory: str | Path, name: str = WEIGHTS_FILE) -> None:
    """Fill ``model`` from ``directory/name`` (the trained weights by default); every tensor must match."""
    path = required_file(Path(directory), name)
    try:
        load_model(model, str(path), strict=True, device="cpu")
    except (RuntimeError, OSError, SafetensorError) as err:
        raise InputDataError(f"weights do not fit the model in {CONFIG_FILE} or the file is damaged "
                             f"({err})", str(path),
                             "save weights and config together with save_pretrained") from err
