"""The one typed configuration tree of sc_fm.

Config is data: a tree of dataclasses loaded from YAML, with dotted command-line overrides
(``train.max_steps=100``), validated with errors that name the key and the fix, and saved
(resolved) beside every output so that a run can be reproduced from its directory alone.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from sc_fm.errors import ConfigError

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class QCConfig:
    """Per-cell quality rules applied at ingestion; each drop is counted by reason."""

    min_genes: int = 200
    min_counts: int = 500
    max_counts: int | None = None
    max_mito_fraction: float | None = 0.2
    drop_duplicate_barcodes: bool = True
    # "error" stops the ingest naming the file; "skip" drops the cell and records why.
    on_nonfinite: Literal["error", "skip"] = "error"
    on_negative: Literal["error", "skip"] = "error"


@dataclass
class PrepareConfig:
    """How atlases become a corpus store (``scfm prepare``)."""

    # None: the shipped human GENCODE v44 vocabulary (on append: the store's own);
    # "corpus": the union of the sources' Ensembl IDs; else a vocabulary TSV path
    vocab: str | None = None
    # several source genes mapping to one vocabulary gene: add them, keep the first, or refuse
    duplicate_genes: Literal["sum", "first", "error"] = "sum"
    min_gene_overlap: float = 0.1  # fraction of a source's genes that must map to the vocabulary
    shard_cells: int = 65536
    chunk_cells: int = 1024
    codec: Literal["blosc-lz4-bitshuffle", "blosc-zstd", "zstd"] = "blosc-lz4-bitshuffle"
    # a read block holds at most this many cells and, where the source stores a row pointer
    # (h5ad CSR, 10x h5), this many nonzeros: together they bound peak memory (docs/ingest.md)
    read_block_cells: int = 2048
    read_block_nnz: int = 2_097_152
    workers: int = 1
    stats_groups: list[str] = field(default_factory=lambda: ["dataset", "assay"])
    qc: QCConfig = field(default_factory=QCConfig)
    # the same source twice (one path named twice, or a checksum already in the store's manifest)
    allow_duplicate_sources: bool = False
    # values that are not whole-number counts (log-normalised, CP10k): recorded in the manifest,
    # and the QC thresholds that assume counts (min/max_counts, max_mito_fraction) are skipped
    allow_non_counts: bool = False


@dataclass
class DataConfig:
    """Which cells stream into training, and how they are shuffled."""

    stores: list[str] = field(default_factory=list)
    # contiguous cells read together; blosc stores decode only the part of a chunk a block
    # needs, so blocks smaller than a chunk cost no more per cell (docs/data.md)
    block_cells: int = 512
    # blocks (randomly chosen) read by one worker task and shuffled together: the shuffle
    # buffer holds block_cells * blocks_per_fetch cells; a batch mixes about this many blocks
    blocks_per_fetch: int = 16
    num_workers: int = 2
    include: dict[str, list[str]] = field(default_factory=dict)  # obs column -> allowed values
    exclude: dict[str, list[str]] = field(default_factory=dict)  # obs column -> removed values


@dataclass
class TokenizerConfig:
    """The pure cell -> tokens function; saved beside every checkpoint."""

    scheme: Literal["rank", "bin"] = "rank"
    n_bins: int = 51
    max_len: int = 1024
    target_sum: float = 1e4
    # gene normalisers: "global", a store stats group (dataset, assay), or "none" (all 1)
    stats_group: str = "dataset"
    # a group's median is used for a gene seen in at least this many of its cells, else global
    min_group_cells: int = 20
    condition_keys: list[str] = field(default_factory=lambda: ["assay", "dataset"])
    condition_dropout: float = 0.1  # training: each condition token is dropped (<unk>) this often
    context: Literal["top", "sample"] = "top"
    n_unexpressed: int = 0
    mask_ratio: float = 0.15
    mask_mode: Literal["bert", "value"] = "bert"


@dataclass
class ModelConfig:
    """Transformer shape; ``size`` fills unset dimensions from ``configs/model/SIZE.yaml``."""

    size: Literal["tiny", "small", "base", "large"] = "tiny"
    n_layers: int | None = None
    d_model: int | None = None
    n_heads: int | None = None
    d_ff: int | None = None
    dropout: float = 0.0
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    attention: Literal["auto", "flash", "sdpa", "math"] = "auto"
    positional: bool | None = None  # None: on for rank tokens, off for set-like (bin) input
    pooling: Literal["cls", "mean"] = "cls"
    activation_checkpointing: bool = False
    tie_embeddings: bool = True
    init_std: float = 0.02  # weights ~ N(0, init_std); residual outputs scaled by 1/sqrt(2 n_layers)


@dataclass
class TrainConfig:
    """Optimisation, distribution and checkpointing (``scfm pretrain``)."""

    max_steps: int = 200
    seed: int = 0
    engine: Literal["deepspeed", "plain"] = "deepspeed"
    deepspeed_config: str = "configs/deepspeed/zero2.yaml"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    global_batch_cells: int = 64
    micro_batch_cells: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    keep_last: int = 3
    log_every: int = 10
    eval_every: int = 0  # 0: no evaluation hook during pretraining


@dataclass
class TrackingConfig:
    """MLflow tracking; default is an embedded SQLite file beside the run directory."""

    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI or sqlite:///RUN_DIR/../mlflow.db
    experiment: str = "sc_fm"
    run_name: str | None = None


@dataclass
class EvalConfig:
    """Held-out real evaluation set and scIB settings."""

    h5ad: str | None = None  # None: the shipped sc_mixology_3cl singlets
    batch_key: str | None = "batch"  # None: batch metrics are reported as not applicable
    label_key: str = "cell_type"
    n_hvg: int = 2000  # batch-aware (seurat_v3) highly variable genes for the PCA and scVI baselines
    n_pcs: int = 50
    # scVI: 2 layers, 30 latent, NB. 150 epochs with a 40-epoch KL warm-up reproduce the
    # 400-epoch sc_mixology anchor (0.868 total) within 0.01 in a seventh of the time.
    scvi_epochs: int = 150
    scvi_kl_warmup_epochs: int = 40
    scvi_latent: int = 30
    scvi_layers: int = 2
    transfer_test_fraction: float = 0.3  # held-out cells for kNN / logistic-regression label transfer
    knn_neighbors: int = 15
    embed_batch_cells: int = 64  # cells per model forward when embedding
    seed: int = 0


@dataclass
class RunConfig:
    """The whole tree: one file configures ingestion, data, tokens, model, training, eval."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0] if errors else ConfigError(f"{key} may not be null", "config")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key} is {value!r}, not one of {list(choices)}", "config",
                              f"set {key} to one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}", "config",
                              f"write it as a YAML list, e.g. {key}=[a,b]")
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}", "config")
        _, val_tp = get_args(tp)
        return {str(k): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}", "config")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{key} must be an integer, got {value!r}", "config")
    if not isinstance(value, tp):
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}", "config")
    return value


def _from_dict(cls: type, raw: Any, prefix: str = "") -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {raw!r}", "config")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]}", "config",
                          f"use one of: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is not a section", "override")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """``["a.b=1", "c.d=[x,y]"]`` -> nested dict, values parsed as YAML scalars/lists."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE", "command line",
                              "write overrides as section.key=value, e.g. train.max_steps=100")
        key, text = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(text) if text != "" else None)
    return tree


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, naming the file in any error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", str(path),
                          "pass an existing YAML file, e.g. configs/runs/tiny.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML ({err})", str(path), "fix the YAML syntax") from err
    if not isinstance(raw, dict):
        raise ConfigError("top level must be a mapping of sections", str(path))
    return raw


def model_preset(size: str) -> dict:
    """Dimensions of a named model size from ``configs/model/SIZE.yaml``."""
    return read_yaml(CONFIGS_DIR / "model" / f"{size}.yaml")


def _resolve_model(model: ModelConfig) -> None:
    preset = model_preset(model.size)
    for key in ("n_layers", "d_model", "n_heads", "d_ff"):
        if getattr(model, key) is None:
            setattr(model, key, int(preset[key]))
    if model.d_model % model.n_heads:
        raise ConfigError(f"model.d_model={model.d_model} is not divisible by model.n_heads="
                          f"{model.n_heads}", "config", "choose n_heads dividing d_model")


def validate(cfg: RunConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    t = cfg.train
    if t.micro_batch_cells <= 0 or t.global_batch_cells <= 0:
        raise ConfigError("train.micro_batch_cells and train.global_batch_cells must be positive",
                          "config")
    if t.global_batch_cells % t.micro_batch_cells:
        raise ConfigError(f"train.global_batch_cells={t.global_batch_cells} is not a multiple of "
                          f"train.micro_batch_cells={t.micro_batch_cells}", "config",
                          "make the global batch a multiple of the micro batch")
    if not 0.0 < cfg.tokenizer.mask_ratio < 1.0:
        raise ConfigError(f"tokenizer.mask_ratio={cfg.tokenizer.mask_ratio} must be in (0, 1)",
                          "config")
    if cfg.tokenizer.max_len < 2:
        raise ConfigError("tokenizer.max_len must be at least 2", "config")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> RunConfig:
    """Load a run config: defaults <- ``base`` <- YAML file <- dotted overrides; then validate."""
    raw: dict = dict(base or {})
    if path is not None:
        raw = _merge(raw, read_yaml(path))
    raw = _merge(raw, parse_overrides(overrides or []))
    cfg = _from_dict(RunConfig, raw)
    _resolve_model(cfg.model)
    validate(cfg)
    return cfg


def section_from_dict(cls: type, raw: dict) -> Any:
    """Build one section (e.g. ``TokenizerConfig``) from a dict saved beside a checkpoint."""
    return _from_dict(cls, raw, cls.__name__)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (what ``--config`` would read back)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
