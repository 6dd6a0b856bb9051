"""The pretrained directory: ``model.safetensors``, ``model_config.json``, ``vocab.tsv``, ``tokenizer/``.

Weights go through safetensors (no pickle, tied weights stored once); the JSON holds the
``ModelConfig`` and the constructor arguments, so a directory rebuilds the same model with no
other input. Checkpoints written during training use the same layout plus the engine's state.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import load_model, save_model
from torch import nn

from sc_fm.config import ModelConfig, section_from_dict
from sc_fm.errors import InputDataError
from sc_fm.vocab import GeneVocab

if TYPE_CHECKING:
    from sc_fm.model.transformer import MaskedGeneTransformer
    from sc_fm.tokenize import CellTokenizer

FORMAT = "sc_fm.model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
VOCAB_FILE = "vocab.tsv"
TOKENIZER_DIR = "tokenizer"


def write_pretrained(model: MaskedGeneTransformer, directory: str | Path, vocab: GeneVocab | None = None,
                     tokenizer: CellTokenizer | None = None) -> None:
    """Save ``model`` (which has ``config`` and ``init_args``), and the vocabulary/tokenizer if given."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / WEIGHTS_FILE))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "config": dataclasses.asdict(model.config), **model.init_args}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if vocab is not None:
        vocab.save(directory / VOCAB_FILE)
    if tokenizer is not None:
        tokenizer.save(directory / TOKENIZER_DIR)


def _required_file(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.exists():
        raise InputDataError(f"{name} is missing", str(directory),
                             "pass a directory written by save_pretrained (a run's final/ or "
                             "checkpoints/step_N/)")
    return path


def read_pretrained(directory: str | Path) -> tuple[ModelConfig, dict]:
    """The ``ModelConfig`` and constructor arguments stored in ``directory``."""
    path = _required_file(Path(directory), CONFIG_FILE)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputDataError(f"not valid JSON ({err})", str(path),
                             "re-save the model with save_pretrained") from err
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise InputDataError(f"not an {FORMAT} v{FORMAT_VERSION} config (format={meta.get('format')}, "
                             f"version={meta.get('format_version')})", str(path),
                             "load it with the sc_fm version that wrote it")
    config = section_from_dict(ModelConfig, meta["config"])
    init_args = {key: meta[key] for key in ("n_tokens", "value_encoding", "n_bins", "condition_sizes")}
    return config, init_args


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Fill ``model`` from ``directory/model.safetensors``; every tensor must match."""
    path = _required_file(Path(directory), WEIGHTS_FILE)
    try:
        load_model(model, str(path), strict=True, device="cpu")
    except (RuntimeError, OSError) as err:
        raise InputDataError(f"weights do not fit the model in {CONFIG_FILE} ({err})", str(path),
                             "save weights and config together with save_pretrained") from err


def load_pretrained(directory: str | Path) -> tuple[MaskedGeneTransformer, GeneVocab, CellTokenizer]:
    """``(model, vocab, tokenizer)`` from a pretrained or checkpoint directory."""
    from sc_fm.model.transformer import MaskedGeneTransformer
    from sc_fm.tokenize import CellTokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise InputDataError(f"{directory} is not a directory", str(directory),
                             "pass a run's final/ or checkpoints/step_N/ directory")
    model = MaskedGeneTransformer.from_pretrained(directory)
    vocab = GeneVocab.load(_required_file(directory, VOCAB_FILE))
    if vocab.n_tokens != model.init_args["n_tokens"]:
        raise InputDataError(f"{VOCAB_FILE} has {vocab.n_tokens} tokens but the model has "
                             f"{model.init_args['n_tokens']}", str(directory),
                             "save the vocabulary the model was trained with")
    tokenizer = CellTokenizer.load(_required_file(directory, TOKENIZER_DIR))
    return model, vocab, tokenizer
