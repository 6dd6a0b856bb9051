"""The one typed configuration tree of sc_fm.

Config is data: a tree of dataclasses loaded from YAML, with dotted command-line overrides
(``train.max_steps=100``), validated with errors that name the key and the fix, and saved
(resolved) beside every output so that a run can be reproduced from its directory alone.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from sc_fm.errors import ConfigError

# Shipped YAML (package data): data/, deepspeed/, runs/; a checkout links configs/ to it.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
# Depth normalisation: counts scaled to this total per cell (CP10k). The stored gene statistics
# are at this scale (their store records it), the tokenizer's target_sum must match them, and
# the cell-level decoder, the baselines and the marker test normalise with it too.
CP10K = 1e4
# Fraction of an input's genes that must map to the vocabulary (ingestion, embedding, ...).
MIN_GENE_OVERLAP = 0.1
# Genes of a user's AnnData that must map to the vocabulary, whatever the fraction (or all of a
# smaller vocabulary): a fraction alone passes a one-gene input (1 of 1), whose cells all embed alike.
MIN_GENES_MAPPED = 100
# Named transformer shapes: (n_layers, d_model, n_heads, d_ff).
MODEL_SIZES = {
    "tiny": (2, 128, 4, 256),
    "small": (6, 256, 4, 512),
    "base": (12, 512, 8, 2048),
    "large": (24, 1024, 16, 4096),
}


# Field metadata for ``--resume``: SHAPES_RUN marks a section of ``RunConfig`` that decides what
# pretraining computes (a resumed run must keep it, but for its RESUMABLE keys); every other
# section (tracking, eval, each command's own) may change. See ``resumable_keys``.
SHAPES_RUN = {"shapes_run": True}
RESUMABLE = {"resumable": True}


def require(checks: list[tuple[bool, str]]) -> None:
    """Raise the first failed ``(ok, "key ... must ...")`` range check of a section."""
    for ok, what in checks:
        if not ok:
            raise ConfigError(what, "config", "fix that key in the YAML file or with KEY=VALUE")


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
    min_gene_overlap: float = MIN_GENE_OVERLAP  # fraction of a source's genes that must map to the vocabulary
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
    # contiguous cells read together; blosc stores decode only the blosc blocks (~70 cells
    # here) a read needs, so small blocks cost little more per cell (docs/data.md)
    block_cells: int = 64
    # blocks read by one worker task and shuffled together: the shuffle buffer holds
    # block_cells * blocks_per_fetch cells; a batch of 256 draws from ~110 of them
    blocks_per_fetch: int = 128
    # stratified: every fetch spreads its blocks evenly over the corpus (each study in its
    # share); random: one plain permutation of the blocks (sc_fm.data.plan)
    block_order: Literal["stratified", "random"] = "stratified"
    num_workers: int = field(default=2, metadata=RESUMABLE)
    include: dict[str, list[str]] = field(default_factory=dict)  # obs column -> allowed values
    exclude: dict[str, list[str]] = field(default_factory=dict)  # obs column -> removed values


@dataclass
class TokenizerConfig:
    """The pure cell -> tokens function; saved beside every checkpoint."""

    scheme: Literal["rank", "bin"] = "rank"
    n_bins: int = 51
    max_len: int = 1024
    target_sum: float = CP10K  # must equal the scale of the stores' gene medians (checked by the tokenizer)
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
    # training only: a cell is binomially down-sampled to U(downsample_min_fraction, 1) of its
    # counts with this probability (depth robustness); the cell-level target stays the full cell
    downsample_prob: float = 0.5
    downsample_min_fraction: float = 0.2

    def __post_init__(self) -> None:
        require([
            (self.n_bins >= 3, "tokenizer.n_bins must be at least 3"),
            (self.max_len >= 2, "tokenizer.max_len must be at least 2"),
            (0 <= self.n_unexpressed <= self.max_len - 2,
             "tokenizer.n_unexpressed must leave room for one expressed gene (0..max_len-2)"),
            (0.0 <= self.condition_dropout < 1.0, "tokenizer.condition_dropout must be in [0, 1)"),
            (0.0 < self.mask_ratio < 1.0, f"tokenizer.mask_ratio={self.mask_ratio} must be in (0, 1)"),
            (self.target_sum > 0, "tokenizer.target_sum must be positive"),
            (self.min_group_cells >= 0, "tokenizer.min_group_cells must be >= 0"),
            (0.0 <= self.downsample_prob <= 1.0, "tokenizer.downsample_prob must be in [0, 1]"),
            (0.0 < self.downsample_min_fraction <= 1.0, "tokenizer.downsample_min_fraction must be in (0, 1]"),
        ])


@dataclass
class ModelConfig:
    """Transformer shape; ``size`` fills unset dimensions from ``MODEL_SIZES``."""

    size: Literal["tiny", "small", "base", "large"] = "tiny"
    n_layers: int | None = None
    d_model: int | None = None
    n_heads: int | None = None
    d_ff: int | None = None
    dropout: float = 0.0
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    attention: Literal["auto", "varlen", "flash", "sdpa", "math"] = "auto"
    # a learned position per rank: off by default, since it drowned the gene tokens (the embedding
    # tracked cell length; docs/evaluate.md); None (older checkpoints): on for rank tokens, off for bins
    positional: bool | None = False
    pooling: Literal["cls", "mean"] = "mean"
    # condition tokens (tokenizer.condition_keys) in front of each cell in the encoder; off, the
    # conditions reach only the expression decoder, so the embedding need not encode them (scVI)
    encoder_conditions: bool = False
    # the cell-level objective (model/decoder.py): every gene of the cell decoded from the cell
    # embedding and its conditions; "nb" needs raw counts, "mse" works on log1p(CP10k)
    cell_objective: Literal["nb", "mse", "none"] = "nb"
    cell_loss_weight: float = 1.0
    cell_latent: int = 32  # dimensions of the decoder's bottleneck
    # what embed() returns: the pooled encoder state ("pooled", d_model wide) or the bottleneck mean
    # ("latent", cell_latent wide); the ablation in docs/evaluate.md chose pooled
    cell_embedding: Literal["pooled", "latent"] = "pooled"
    cell_kl_weight: float = 1.0  # 1: scVI's ELBO; 0: a plain autoencoder bottleneck
    # a batch adversary on the cell embedding (model/adversary.py): each condition key predicted
    # from the bottleneck through gradient reversal; 0: off (needs the cell objective to be on)
    cell_adversary_weight: float = 0.0
    # how the encoder is trained against it: "reversal" (gradient reversal) or "confusion"
    # (towards the batch's category frequencies; model/adversary.py says why)
    cell_adversary: Literal["reversal", "confusion"] = "reversal"
    cell_adversary_lr_scale: float = 1.0  # the adversary's learning rate over train.lr
    # cross-batch neighbour attraction on the cell embedding (model/mixing.py): each cell moved by
    # the mean offset of its own batch's neighbours to their mutual nearest neighbours in other
    # batches (conditions), found among the last cell_mixing_bank cells; 0: off (scfm adapt
    # switches it on: AdaptConfig.mixing_weight)
    cell_mixing_weight: float = 0.0
    cell_mixing_k: int = 10
    cell_mixing_bank: int = 2048
    token_loss_weight: float = 1.0  # weight of the masked gene and value losses
    activation_checkpointing: bool = False
    tie_embeddings: bool = True
    init_std: float = 0.02  # weights ~ N(0, init_std); residual outputs scaled by 1/sqrt(2 n_layers)
    # the gene table's start: "coexpression" (each gene's loadings on the top d_model principal
    # axes of the training cells, data/coexpression.py; a fresh pretraining only) or "normal"
    gene_init: Literal["coexpression", "normal"] = "coexpression"
    gene_init_cells: int = 20000  # cells sampled (in blocks) for the co-expression axes

    def __post_init__(self) -> None:
        sizes = {"n_layers": self.n_layers, "d_model": self.d_model, "n_heads": self.n_heads, "d_ff": self.d_ff}
        require([*((value is None or value >= 1, f"model.{key} must be at least 1 (got {value})")
                   for key, value in sizes.items()),
                 (0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1) (got {self.dropout})"),
                 (self.init_std > 0, f"model.init_std must be > 0 (got {self.init_std})"),
                 (self.cell_latent >= 1, f"model.cell_latent must be at least 1 (got {self.cell_latent})"),
                 (min(self.cell_loss_weight, self.cell_kl_weight, self.cell_adversary_weight,
                      self.cell_mixing_weight, self.token_loss_weight) >= 0,
                  "model.cell_loss_weight, cell_kl_weight, cell_adversary_weight, cell_mixing_weight "
                  "and token_loss_weight must be >= 0"),
                 (self.cell_mixing_k >= 1 and self.cell_mixing_bank >= self.cell_mixing_k,
                  "model.cell_mixing_k must be at least 1 and model.cell_mixing_bank at least "
                  f"cell_mixing_k (got {self.cell_mixing_k} and {self.cell_mixing_bank})"),
                 (self.cell_adversary_lr_scale > 0, "model.cell_adversary_lr_scale must be > 0"),
                 (self.gene_init_cells >= 2, "model.gene_init_cells must be at least 2")])


@dataclass
class TrainConfig:
    """Optimisation, distribution and checkpointing (``scfm pretrain``)."""

    max_steps: int = field(default=200, metadata=RESUMABLE)
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
    checkpoint_every: int = field(default=100, metadata=RESUMABLE)
    keep_last: int = field(default=3, metadata=RESUMABLE)
    log_every: int = field(default=10, metadata=RESUMABLE)
    eval_every: int = field(default=0, metadata=RESUMABLE)  # 0: no evaluation hook during pretraining
    # --resume on a store appended to since the run started (not exact)
    allow_data_change: bool = field(default=False, metadata=RESUMABLE)

    def __post_init__(self) -> None:
        require([(self.micro_batch_cells > 0 and self.global_batch_cells > 0,
                  "train.micro_batch_cells and train.global_batch_cells must be positive")])
        if self.global_batch_cells % self.micro_batch_cells:
            raise ConfigError(f"train.global_batch_cells={self.global_batch_cells} is not a multiple of "
                              f"train.micro_batch_cells={self.micro_batch_cells}", "config",
                              "make the global batch a multiple of the micro batch")


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
class InputSettings:
    """How a user's AnnData meets a checkpoint, the same for every command that reads one (the
    ``input`` of the embed, adapt, explain, finetune and benchmark sections), checked once here.

    ``batch_key`` has one meaning everywhere: the obs column of the input's technical batches
    (runs, protocols, studies). Each use follows from it: the input's own gene-normaliser groups
    when the checkpoint normalises per group, the scIB batch label of a benchmark, and in
    ``adapt`` also the categories of the new condition tokens."""

    batch_key: str | None = None
    conditions: dict[str, str] = field(default_factory=dict)  # condition key -> category for all cells
    min_gene_overlap: float = MIN_GENE_OVERLAP  # fraction of the input's genes in the vocabulary
    min_genes_mapped: int = MIN_GENES_MAPPED  # and at least this many of them
    batch_cells: int = 64  # cells per model forward
    block_cells: int = 1024  # cells read from the input at once

    def __post_init__(self) -> None:
        require([(0.0 < self.min_gene_overlap <= 1.0, "input.min_gene_overlap must be in (0, 1]"),
                 (self.min_genes_mapped >= 1, "input.min_genes_mapped must be at least 1"),
                 (self.batch_cells > 0 and self.block_cells > 0,
                  "input.batch_cells and input.block_cells must be positive")])


@dataclass
class EmbedConfig:
    """``scfm embed`` (and every embedding of user cells): how an AnnData meets a checkpoint."""

    input: InputSettings = field(default_factory=InputSettings)


@dataclass
class AdaptConfig:
    """``scfm adapt``: continue the self-supervised objectives on a user's own cells (no labels)."""

    input: InputSettings = field(default_factory=InputSettings)
    steps: int = 300
    # a tenth of pretraining's 1e-3: at the pretraining rate, 300 steps on a few hundred cells taught
    # the encoder the protocols apart (batch 0.45 vs 0.80 here; docs/evaluate.md); None: train.lr
    lr: float | None = 1e-4
    seed: int = 0
    # the batch objectives adaptation adds on the cell embedding (docs/evaluate.md, "Adaptation
    # that mixes the batches"): cross-batch neighbour attraction (model.cell_mixing_weight, its
    # bank the input's cells up to 4,096) and the confusion adversary (model.cell_adversary_weight,
    # its classifier at 10x the rate); 0 switches either off, KEY=VALUE overrides win
    mixing_weight: float = 3.0
    adversary_weight: float = 1.0
    # the adapted checkpoint embeds on the top N principal axes of the input cells' pooled states
    # (sc_fm/pretrained/axes.py; N = 10, scVI's latent size): the low-variance axes kept the
    # batches apart (docs/evaluate.md); 0: the full pooled state
    embedding_axes: int = 10

    def __post_init__(self) -> None:
        require([(self.steps >= 1, f"adapt.steps={self.steps} must be at least 1"),
                 (self.embedding_axes >= 0, f"adapt.embedding_axes={self.embedding_axes} must be >= 0"),
                 (self.lr is None or self.lr > 0, "adapt.lr must be positive"),
                 (min(self.mixing_weight, self.adversary_weight) >= 0,
                  "adapt.mixing_weight and adapt.adversary_weight must be >= 0")])


@dataclass
class BenchmarkConfig:
    """``scfm benchmark``: which checkpoints meet which cells (scoring settings: ``eval``)."""

    input: InputSettings = field(default_factory=InputSettings)  # input.batch_key: the scIB batch column too
    seeds: int = 1  # seeded methods (scVI, Harmony, ...) are repeated with seeds eval.seed .. + seeds - 1
    # > 0: each checkpoint is also adapted to the input's cells for this many steps ("(adapted)"),
    # and the same architecture from random initialisation too ("(scratch, adapted)")
    adapt_steps: int = 0
    scratch_multipliers: list[int] = field(default_factory=lambda: [1, 4])  # scratch runs adapt_steps x these

    def __post_init__(self) -> None:
        require([(self.seeds >= 1, f"benchmark.seeds={self.seeds} must be at least 1 (--seeds K repeats "
                                   f"every seeded method K times)"),
                 (self.adapt_steps >= 0, "benchmark.adapt_steps must be >= 0 (0: no adaptation rows)"),
                 (all(m >= 1 for m in self.scratch_multipliers), "benchmark.scratch_multipliers must be >= 1")])


@dataclass
class ExplainConfig:
    """``scfm explain``: gene attributions, in-silico perturbation and the marker comparison."""

    input: InputSettings = field(default_factory=InputSettings)  # input.batch_cells: cells (x steps) per forward
    top_k: int = 20  # genes.csv's top_k_fraction: how often a gene is among a cell's k most attributed
    steps: int = 16  # integrated-gradients steps from the baseline to the cell
    # the integrated-gradients baseline of every gene token: "masked" (<mask> gene, hidden value: one
    # reference for all cells) or "hidden_value" (the cell's own genes with their values hidden)
    baseline: Literal["masked", "hidden_value"] = "masked"
    max_cells_per_group: int | None = 300  # seeded sample of each group's cells; None: every cell
    perturb: list[str] = field(default_factory=list)  # genes to delete / raise; empty: each group's top genes
    perturb_top: int = 1  # without perturb: this many top attributed genes per group
    marker_ks: list[int] = field(default_factory=lambda: [20, 50])  # overlap with DE markers at these k
    de_method: Literal["wilcoxon", "t-test", "t-test_overestim_var", "logreg"] = "wilcoxon"
    random_draws: int = 200  # random gene sets of the control, per group and k
    seed: int = 0

    def __post_init__(self) -> None:
        require([(self.top_k >= 1, "explain.top_k must be at least 1"),
                 (self.steps >= 1, "explain.steps must be at least 1"),
                 (self.max_cells_per_group is None or self.max_cells_per_group >= 2,
                  "explain.max_cells_per_group must be at least 2 (or null for every cell)"),
                 (self.perturb_top >= 0, "explain.perturb_top must be >= 0"),
                 (bool(self.marker_ks) and all(k >= 1 for k in self.marker_ks),
                  "explain.marker_ks must list positive k"),
                 (self.random_draws >= 1, "explain.random_draws must be at least 1")])


@dataclass
class FinetuneConfig:
    """``scfm finetune``: one fine-tuning run; saved beside its checkpoint."""

    label_key: str = "cell_type"
    split_key: str | None = None  # donor/batch column whose groups are held out; None: random split
    input: InputSettings = field(default_factory=InputSettings)  # input.batch_cells: per forward of predictions
    adversary_key: str | None = None  # obs column the batch-adversarial objective must not read
    mode: Literal["full", "linear"] = "full"  # "linear": frozen encoder, head only (linear probe)
    epochs: int = 10
    max_steps: int | None = None  # exactly this many optimiser steps (epochs then ignored); None: epochs
    batch_cells: int = 16  # cells per training step
    # encoder; None: a tenth of the rate the checkpoint was pretrained at (train.lr of its
    # config.yaml), as adaptation. On the PBMC cross-chemistry set 1e-5 left the encoder where it
    # was, and the full pretraining rate overfitted one direction (docs/evaluate.md)
    lr: float | None = None
    head_lr: float = 1e-2
    encoder_warmup: float = 0.1  # the encoder's rate rises from 0 to lr over this fraction of the steps
    weight_decay: float = 0.01
    # "balanced": each class's loss weighted by n / (k * its training cells), as scikit-learn's
    # class_weight="balanced", so a rare type counts as much as a common one; "none": plain
    class_weight: Literal["none", "balanced"] = "none"
    val_fraction: float = 0.2
    # keep the epoch whose classifier scores the best macro-F1 on the validation cells (then
    # the printed validation scores are those it was selected on); false: the last epoch
    select_epoch: bool = True
    adversarial_weight: float = 0.0  # > 0: batch-adversarial integration objective (needs adversary_key)
    # the context of every cell drawn from the training cells' N most variable genes (seurat_v3,
    # as the LogReg (HVG) baseline picks them), kept with the classifier for its predictions;
    # null: from all genes, as pretraining. At 128 tokens most of a cell's context is otherwise
    # one-count genes that say little about its type; 1,000 beat 2,000 in both PBMC directions
    # over three seeds, and 4,000 on one (docs/evaluate.md)
    context_hvg: int | None = 1000
    # the classifier scored, kept and saved is an exponential moving average of its weights,
    # this decay per step (0: the weights as trained); docs/evaluate.md, "Averaged weights"
    weight_average: float = 0.99
    seed: int = 0

    def __post_init__(self) -> None:
        require([(self.epochs >= 1, "finetune.epochs must be at least 1"),
                 (self.context_hvg is None or self.context_hvg >= 1, "finetune.context_hvg must be at least 1 or null"),
                 (self.max_steps is None or self.max_steps >= 1, "finetune.max_steps must be at least 1 or null"),
                 (self.batch_cells >= 2, "finetune.batch_cells must be at least 2"),
                 (self.lr is None or self.lr > 0,
                  "finetune.lr must be positive (or null: a tenth of the pretraining rate)"),
                 (0.0 <= self.encoder_warmup <= 1.0, "finetune.encoder_warmup must be in [0, 1]"),
                 (0.0 <= self.weight_average < 1.0, "finetune.weight_average must be in [0, 1) (0: off)"),
                 (0.0 < self.val_fraction < 1.0, "finetune.val_fraction must be in (0, 1)"),
                 (self.adversarial_weight >= 0, "finetune.adversarial_weight must be >= 0")])


@dataclass
class RunConfig:
    """The whole tree: one file configures ingestion, data, tokens, model, training, eval."""

    data: DataConfig = field(default_factory=DataConfig, metadata=SHAPES_RUN)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig, metadata=SHAPES_RUN)
    model: ModelConfig = field(default_factory=ModelConfig, metadata=SHAPES_RUN)
    train: TrainConfig = field(default_factory=TrainConfig, metadata=SHAPES_RUN)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def resumable_keys() -> set[str]:
    """The dotted settings that may change when a run is resumed: every section of ``RunConfig``
    not marked SHAPES_RUN, and the RESUMABLE keys of those that are."""
    keys = set()
    for section in dataclasses.fields(RunConfig):
        if not section.metadata.get("shapes_run"):
            keys.add(section.name)
            continue
        keys.update(f"{section.name}.{f.name}" for f in dataclasses.fields(section.default_factory)
                    if f.metadata.get("resumable"))
    return keys


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
    try:
        return cls(**kwargs)
    except ConfigError as err:
        section = prefix.rpartition(".")[0]  # a shared section (InputSettings) checks keys without its parent
        if section and err.what.startswith(prefix.rpartition(".")[2] + "."):
            raise ConfigError(f"{section}.{err.what}", err.where, err.fix) from None
        raise


# Keys that moved: old dotted name -> new. A config layer (the file saved beside a checkpoint, a
# YAML file, the overrides) may still use an old name; its value moves to the new key unless the
# same layer names the new key too. (The per-command ``tracking`` switches became the one
# ``tracking.enabled`` that every command honours; the input settings moved into each section's
# ``input``.)
MOVED_KEYS = {
    "benchmark.tracking": "tracking.enabled",
    "explain.tracking": "tracking.enabled",
    "finetune.tracking": "tracking.enabled",
    **{f"{section}.{key}": f"{section}.input.{key}" for section, keys in {
        "embed": ("batch_key", "conditions", "min_gene_overlap", "batch_cells", "block_cells"),
        "adapt": ("batch_key", "min_gene_overlap"),
        "benchmark": ("min_gene_overlap",),
        "explain": ("batch_key", "batch_cells", "min_gene_overlap"),
        "finetune": ("batch_key", "min_gene_overlap")}.items() for key in keys},
}


def _section(tree: dict, parts: list[str]) -> dict | None:
    for part in parts:
        tree = tree.get(part)
        if not isinstance(tree, dict):
            return None
    return tree


def move_keys(tree: dict) -> dict:
    """A copy of the nested ``tree`` with every key of ``MOVED_KEYS`` under its new name."""
    tree = copy.deepcopy(tree)
    for old, new in MOVED_KEYS.items():
        *parents, leaf = old.split(".")
        node = _section(tree, parents)
        if node is None or leaf not in node:
            continue
        value = node.pop(leaf)
        *new_parents, new_leaf = new.split(".")
        target = _section(tree, new_parents)
        if target is None or new_leaf not in target:
            _set_dotted(tree, new, value)
    return tree


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
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError as err:  # e.g. a tag (!!python/...), which safe_load refuses to build
            raise ConfigError(f"the value of override {key.strip()!r} is not a plain YAML value "
                              f"({str(err).splitlines()[0]})", "command line",
                              "give a number, a word, true/false, null or a [list]; quote text with "
                              "special characters") from err
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, top: dict, depth: int = 0) -> dict:
    """``top`` over ``base``, mappings merged key by key; below the sections an empty mapping in
    ``top`` clears the key (``data.exclude={}`` removes the exclusions a saved config holds)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and (value or depth == 0) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, depth + 1)
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


def shipped_config(name: str | Path, kind: str) -> Path:
    """A YAML file: ``name`` as a path (relative to the working directory or, for paths such
    as ``configs/runs/tiny.yaml``, to the installed package), or a shipped preset by bare name
    (``tiny`` -> ``configs/runs/tiny.yaml``; ``kind`` is ``runs``, ``deepspeed`` or ``data``)."""
    text = str(name)
    candidates = [Path(text), CONFIGS_DIR.parent / text, CONFIGS_DIR / kind / f"{text}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    presets = sorted(p.stem for p in (CONFIGS_DIR / kind).glob("*.yaml"))
    raise ConfigError(f"config {text!r} not found (neither a file nor a shipped {kind} preset)", text,
                      f"pass an existing YAML file or one of the presets {presets}")


def resolve_model(model: ModelConfig) -> ModelConfig:
    """A copy of ``model`` with unset dimensions taken from its ``size`` preset, checked."""
    preset = dict(zip(("n_layers", "d_model", "n_heads", "d_ff"), MODEL_SIZES[model.size]))
    dims = {key: preset[key] if getattr(model, key) is None else getattr(model, key) for key in preset}
    if dims["d_model"] % dims["n_heads"]:
        raise ConfigError(f"model.d_model={dims['d_model']} is not divisible by model.n_heads="
                          f"{dims['n_heads']}", "config", "choose n_heads dividing d_model")
    return dataclasses.replace(model, **dims)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> RunConfig:
    """Load a run config: defaults <- ``base`` <- YAML file (a path or a shipped name) <- dotted
    overrides; each section checks its own ranges as it is built."""
    raw: dict = move_keys(base or {})
    if path is not None:
        raw = _merge(raw, move_keys(read_yaml(shipped_config(path, "runs"))))
    raw = _merge(raw, move_keys(parse_overrides(overrides or [])))
    cfg = _from_dict(RunConfig, raw)
    cfg.model = resolve_model(cfg.model)
    return cfg


def section_from_dict(cls: type, raw: dict) -> Any:
    """Build one section (e.g. ``TokenizerConfig``) from a dict saved beside a checkpoint."""
    return _from_dict(cls, raw, cls.__name__)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (what ``--config`` would read back)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
