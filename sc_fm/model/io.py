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

from sc_fm.config import ModelConfig, resolve_model, section_from_dict
from sc_fm.errors import ConfigError, InputDataError

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


def write_model(model: nn.Module, directory: str | Path, vocab_hash: str | None = None) -> None:
    """Save ``model`` (which has ``config`` and ``init_args``) into ``directory``; ``vocab_hash``
    records the vocabulary its gene rows were trained on, checked when it is loaded again."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_weights(model, directory / WEIGHTS_FILE)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "config": dataclasses.asdict(model.config), **model.init_args,
            **({"vocab_hash": vocab_hash} if vocab_hash else {})}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_model_config(directory: str | Path) -> tuple[ModelConfig, dict]:
    """The ``ModelConfig`` and constructor arguments stored in ``directory``."""
    path = required_file(Path(directory), CONFIG_FILE)
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputDataError(f"not valid JSON ({err})", str(path),
                             "re-save the model with save_pretrained") from err
    if not isinstance(meta, dict):
        raise InputDataError(f"the model config must be a JSON object, not a {type(meta).__name__}", str(path),
                             "re-save the model with save_pretrained")
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise InputDataError(f"not an {FORMAT} v{FORMAT_VERSION} config (format={meta.get('format')}, "
                             f"version={meta.get('format_version')})", str(path),
                             "load it with the sc_fm version that wrote it")
    missing = [key for key in ("config", *INIT_ARGS) if key not in meta]
    if missing:
        raise InputDataError(f"{missing[0]!r} is missing from the model config", str(path),
                             "re-save the model with save_pretrained")
    init_args = {key: meta[key] for key in INIT_ARGS}
    problem = _init_args_problem(init_args, meta["config"])
    if problem:
        raise InputDataError(f"the model config is damaged: {problem}", str(path),
                             "re-save the model with save_pretrained")
    try:  # the config tree's own range checks, before anything is allocated
        config = resolve_model(section_from_dict(ModelConfig, {**LEGACY_MODEL_KEYS, **meta["config"]}))
    except ConfigError as err:
        raise InputDataError(f"the model config is out of range: {err.what}", str(path),
                             "re-save the model with save_pretrained") from err
    check_memory(parameter_count(config, init_args["n_tokens"], init_args["condition_sizes"]), str(path))
    return config, init_args


def _init_args_problem(init_args: dict, config: object) -> str | None:
    """What is wrong with the stored constructor arguments' types and ranges, or None."""
    n_tokens, n_bins, sizes = init_args["n_tokens"], init_args["n_bins"], init_args["condition_sizes"]
    whole = (lambda v: isinstance(v, int) and not isinstance(v, bool))
    if not isinstance(config, dict):
        return f"'config' must be a mapping, not {type(config).__name__}"
    if not whole(n_tokens) or n_tokens < 1:
        return f"n_tokens must be a whole number >= 1 (got {n_tokens!r})"
    if not whole(n_bins) or n_bins < 0:
        return f"n_bins must be a whole number >= 0 (got {n_bins!r})"
    if not isinstance(init_args["value_encoding"], str):
        return f"value_encoding must be a string (got {init_args['value_encoding']!r})"
    if not isinstance(sizes, list) or not all(whole(v) and v >= 1 for v in sizes):
        return f"condition_sizes must be a list of whole numbers >= 1 (got {sizes!r})"
    return None


def parameter_count(config: ModelConfig, n_tokens: int, condition_sizes: list[int]) -> int:
    """About how many parameters ``config`` builds (within a few percent): blocks, the gene
    table and head, and the cell decoder with its per-condition offsets."""
    d, f, layers = config.d_model, config.d_ff, config.n_layers
    block = 4 * d * d + (3 if config.mlp == "swiglu" else 2) * d * f
    genes = n_tokens * d * (1 if config.tie_embeddings else 2)
    decoder = 0 if config.cell_objective == "none" else (
        2 * d * config.cell_latent + (config.cell_latent + 1 + sum(condition_sizes)) * n_tokens)
    return layers * block + genes + decoder + sum(condition_sizes) * d


def available_memory() -> int:
    """Bytes this process may still allocate (the machine's available memory)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(n_parameters: int, where: str, bytes_per_parameter: int = 8, extra_bytes: int = 0,
                 what: str = "loading the model") -> None:
    """Refuse before allocating when ``n_parameters`` (fp32, ``bytes_per_parameter`` each:
    8 for weights plus their loaded copy, 16 for training's gradients and Adam moments)
    plus ``extra_bytes`` (activations) exceed the available memory."""
    need = n_parameters * bytes_per_parameter + extra_bytes
    free = available_memory()
    if need > free:
        raise InputDataError(f"{what} needs about {need / 2**30:,.1f} GiB ({n_parameters:,} parameters), "
                             f"and {free / 2**30:,.1f} GiB is available", where,
                             "check the sizes in the model config (a damaged or foreign file?), or run on a "
                             "machine with more memory")


def recorded_vocab_hash(directory: str | Path) -> str | None:
    """The vocabulary hash saved with the model (None: saved before it was recorded)."""
    meta = json.loads(required_file(Path(directory), CONFIG_FILE).read_text())
    return meta.get("vocab_hash") if isinstance(meta, dict) else None


def load_weights(model: nn.Module, directory: str | Path, name: str = WEIGHTS_FILE) -> None:
    """Fill ``model`` from ``directory/name`` (the trained weights by default); every tensor must match."""
    path = required_file(Path(directory), name)
    try:
        load_model(model, str(path), strict=True, device="cpu")
    except (RuntimeError, OSError, SafetensorError) as err:
        raise InputDataError(f"weights do not fit the model in {CONFIG_FILE} or the file is damaged "
                             f"({err})", str(path),
                             "save weights and config together with save_pretrained") from err
    damaged = [name for name, tensor in model.state_dict().items()
               if tensor.is_floating_point() and not tensor.isfinite().all()]
    if damaged:
        raise InputDataError(f"{len(damaged)} weight tensor(s) hold NaN or infinite values (first: {damaged[0]})",
                             str(path), "use an earlier checkpoint of the run, or re-train")
