"""Fine-tune a pretrained encoder for cell-type annotation on an AnnData.

Cells are tokenised once exactly as for embedding (no masking), split by donor or batch,
and the classifier is trained with AdamW (encoder and head at their own learning rates, or
the head alone for a linear probe). Held-out accuracy and macro-F1 are measured on the
validation cells; predictions for every cell go into ``.obs``; the fine-tuned encoder is
saved as a pretrained directory (so ``scfm embed``/``benchmark`` accept it) plus the head.

Each cell's context is drawn from the training cells' most variable genes (``context_hvg``),
not from all its genes: at 128 tokens a cell's context is otherwise mostly one-count genes that
tie on count, and the markers that tell T-cell types apart are among the ones left out. The
panel is saved with the classifier, and its predictions on new cells read the same genes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn
from tqdm.auto import tqdm

from sc_fm.config import FinetuneConfig, InputSettings, TrackingConfig, TrainConfig, read_yaml
from sc_fm.errors import InputDataError
from sc_fm.finetune.heads import CellClassifier
from sc_fm.finetune.splits import group_split
from sc_fm.batch import to_device
from sc_fm.pretrained import Pretrained, unmasked_batches
from sc_fm.pretrained.batches import evaluating
from sc_fm.pretrained.inputs import require_obs_column
from sc_fm.tokenize import CellTokenizer, TokenizedCells

HEAD_FILE, FINETUNE_FILE = "head.safetensors", "finetune.json"
PREDICTION_KEY, SPLIT_KEY = "scfm_prediction", "scfm_split"


@dataclass
class FinetuneResult:
    directory: Path
    accuracy: float
    macro_f1: float
    n_train: int
    n_val: int
    history: list[dict]
    config: FinetuneConfig  # as trained: ``lr`` resolved (``encoder_lr``)
    epoch: int  # the epoch whose classifier was kept (``select_epoch``: the best on validation)
    panel_genes: int | None = None  # genes every context was drawn from (``context_hvg``); None: all


def _batch(tokenizer: CellTokenizer, cells: TokenizedCells, rows: np.ndarray, device: torch.device) -> dict:
    """The cells ``rows`` (any order) as one unmasked batch on ``device``, for training steps."""
    return to_device(tokenizer.mask_and_pack(cells.take(rows), None, rows), device)


def predict(classifier: CellClassifier, tokenizer: CellTokenizer, cells: TokenizedCells,
            batch_cells: int) -> np.ndarray:
    """Class probabilities ``[n, n_classes]`` for every cell."""
    with evaluating(classifier) as device:
        out = [torch.softmax(classifier(batch)["logits"], dim=-1).float().cpu().numpy()
               for _, _, batch in unmasked_batches(tokenizer, cells, batch_cells, device)]
    return np.concatenate(out)


def pick_device(device: str | torch.device | None) -> torch.device:
    """``device`` as given, else the GPU when there is one, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PRETRAINING_RATE_SHARE = 0.1  # the default encoder rate, as a share of the checkpoint's pretraining rate


def encoder_lr(pretrained: Pretrained, config: FinetuneConfig) -> float:
    """The encoder's fine-tuning rate: ``config.lr``, else a tenth of the rate ``pretrained`` was
    pretrained at (``train.lr`` in the config.yaml beside it, else pretraining's default). Each
    model size's run config sets its own pretraining rate, so the default follows the size."""
    if config.lr is not None:
        return config.lr
    settings = pretrained.run_config
    saved = read_yaml(settings).get("train", {}).get("lr") if settings is not None else None
    return PRETRAINING_RATE_SHARE * (float(saved) if saved is not None else TrainConfig().lr)


def _optimizer(classifier: CellClassifier, config: FinetuneConfig,
               total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the head (constant ``head_lr``) and, in full mode, the encoder, whose rate rises
    linearly from 0 to ``lr`` over the first ``encoder_warmup`` of the steps: the new head's large
    early gradients would otherwise reach the encoder while the head is still random."""
    heads = [p for name, p in classifier.named_parameters() if not name.startswith("encoder.")]
    groups = [{"params": heads, "lr": config.head_lr}]
    schedules = [lambda step: 1.0]
    if config.mode == "full":
        groups.append({"params": list(classifier.encoder.parameters()), "lr": config.lr})
        warmup = max(round(config.encoder_warmup * total_steps), 1)
        schedules.append(lambda step: min((step + 1) / warmup, 1.0))
    else:
        classifier.encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)


def weight_average(classifier: CellClassifier, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of ``classifier``'s weights (``decay`` per step; None for 0),
    updated after every step and the classifier that is scored, kept and saved. Without it, the
    same weights, seed and cells fine-tuned with another CPU thread count ended up to 0.087 macro
    F1 apart on the PBMC cross-chemistry set (docs/evaluate.md)."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(classifier, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def class_weights(y: torch.Tensor, n_classes: int, scheme: str) -> torch.Tensor | None:
    """Cross-entropy weights of ``scheme`` from the training labels ``y``: None for "none";
    for "balanced" ``n / (k * n_c)`` over the k classes present (a class absent from training
    gets weight 0, since it contributes no loss anyway)."""
    if scheme == "none":
        return None
    counts = torch.bincount(y, minlength=n_classes).double()
    present = counts > 0
    weights = torch.zeros(n_classes, dtype=torch.float64, device=y.device)
    weights[present] = len(y) / (int(present.sum()) * counts[present])
    return weights.float()


def _check(adata, config: FinetuneConfig, where: str) -> None:
    require_obs_column(adata, config.label_key, "--label-key", where)
    require_obs_column(adata, config.split_key, "--split-key", where)
    require_obs_column(adata, config.input.batch_key, "--batch-key", where)
    require_obs_column(adata, config.adversary_key, "--adversary-key", where)
    if config.adversarial_weight > 0 and config.adversary_key is None:
        raise InputDataError("the batch-adversarial objective needs batch labels", "--adversarial-weight",
                             "pass --adversary-key COLUMN or set the weight to 0")
    n_classes = adata.obs[config.label_key].astype(str).nunique()
    if n_classes < 2:
        raise InputDataError(f".obs[{config.label_key!r}] has {n_classes} class; a classifier needs at least two",
                             where, "pass with --label-key a column of two or more cell types")


def finetune(pretrained: Pretrained, adata, out_dir: str | Path, config: FinetuneConfig,
             progress: bool = True, where: str = "input", device: str | torch.device | None = None) -> FinetuneResult:
    """Train a copy of ``pretrained``'s encoder (the caller's model stays as it was) with a head on
    ``device`` (default: the GPU when there is one), keep the epoch that scores best on the
    held-out groups (``select_epoch``), write predictions into ``adata.obs`` and save to ``out_dir``."""
    from sklearn.metrics import accuracy_score, f1_score

    _check(adata, config, where)
    config = dataclasses.replace(config, lr=encoder_lr(pretrained, config))  # saved and tracked as used
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = pick_device(device)
    val = group_split(adata.obs, config.split_key, config.label_key, config.val_fraction, config.seed)
    train_rows = np.flatnonzero(~val)
    panel = context_panel(pretrained, adata, train_rows, config, where)
    inputs = pretrained.input_cells(adata, config.input, where, panel)
    tokenizer, cells = inputs.tokenizer, inputs.tokenize()
    labels = adata.obs[config.label_key].astype(str).to_numpy()
    classes = sorted(set(labels))
    y = torch.as_tensor(np.searchsorted(classes, labels)).to(device)
    batches = sorted(set(adata.obs[config.adversary_key].astype(str))) if config.adversarial_weight > 0 else []
    b = (torch.as_tensor(np.searchsorted(batches, adata.obs[config.adversary_key].astype(str))).to(device)
         if batches else None)
    encoder = copy.deepcopy(pretrained.model).to(device)
    classifier = CellClassifier(encoder, len(classes), len(batches)).to(device)
    with torch.no_grad():
        blocks = np.array_split(train_rows, max(len(train_rows) // 64, 1))
        classifier.standardize.fit(torch.cat([encoder.pool(_batch(tokenizer, cells, rows, device))
                                              for rows in blocks]))
    weight = class_weights(y[torch.as_tensor(train_rows, device=device)], len(classes), config.class_weight)
    history = []
    per_epoch = -(-len(train_rows) // config.batch_cells)
    steps_left = config.max_steps if config.max_steps is not None else config.epochs * per_epoch
    optimizer, schedule = _optimizer(classifier, config, steps_left)
    val_cells = cells.take(np.flatnonzero(val))
    averaged = weight_average(classifier, config.weight_average)
    best: tuple[float, int, dict] | None = None  # (validation macro-F1, epoch, the classifier's state)
    for epoch in tqdm(range(-(-steps_left // per_epoch)), desc="fine-tuning", disable=not progress):
        classifier.train()
        order = rng.permutation(train_rows)[:steps_left * config.batch_cells]
        steps_left -= -(-len(order) // config.batch_cells)
        total = 0.0
        for lo in range(0, len(order), config.batch_cells):
            rows = np.sort(order[lo:lo + config.batch_cells])
            out = classifier(_batch(tokenizer, cells, rows, device))
            loss = nn.functional.cross_entropy(out["logits"], y[rows], weight=weight)
            if b is not None:
                adversary_loss = nn.functional.cross_entropy(out["batch_logits"], b[rows])
                loss = loss + config.adversarial_weight * adversary_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if averaged is not None:
                averaged.update_parameters(classifier)
            total += float(loss.detach()) * len(rows)
        history.append({"epoch": epoch + 1, "train_loss": total / max(len(order), 1)})
        scored = averaged.module if averaged is not None else classifier
        if config.select_epoch:
            guess = np.asarray(classes)[predict(scored, tokenizer, val_cells, config.input.batch_cells).argmax(1)]
            score = history[-1]["val_macro_f1"] = float(f1_score(labels[val], guess, average="macro"))
            if best is None or score >= best[0]:  # a tie keeps the later epoch
                best = (score, epoch + 1, copy.deepcopy(scored.state_dict()))
    if best is not None:
        classifier.load_state_dict(best[2])
    elif averaged is not None:
        classifier.load_state_dict(averaged.module.state_dict())
    predicted = np.asarray(classes)[predict(classifier, tokenizer, cells, config.input.batch_cells).argmax(axis=1)]
    adata.obs[PREDICTION_KEY] = predicted
    adata.obs[SPLIT_KEY] = np.where(val, "validation", "train")
    accuracy = float(accuracy_score(labels[val], predicted[val]))
    macro_f1 = float(f1_score(labels[val], predicted[val], average="macro"))
    directory = save_finetuned(classifier.cpu(), pretrained, out_dir, config, classes, batches, panel)
    kept = best[1] if best is not None else len(history)
    return FinetuneResult(directory, accuracy, macro_f1, len(train_rows), int(val.sum()), history, config, kept,
                          None if panel is None else len(panel))


def context_panel(pretrained: Pretrained, adata, train_rows: np.ndarray, config: FinetuneConfig,
                  where: str) -> np.ndarray | None:
    """Vocabulary indices of the training cells' ``config.context_hvg`` most variable genes
    (``classify.hvg_genes``, as the LogReg (HVG) baseline picks them); None: every gene."""
    if config.context_hvg is None:
        return None
    from sc_fm.classify import hvg_genes

    variable = hvg_genes(adata.X[train_rows], config.context_hvg)
    projection = pretrained.gene_mapping(adata, config.input, where).projection
    return np.unique(projection[np.flatnonzero(variable)].indices)


def _heads(classifier: CellClassifier) -> nn.ModuleDict:
    """The modules saved beside the encoder (the encoder itself is a pretrained directory)."""
    adversary = {"adversary": classifier.adversary} if classifier.adversary is not None else {}
    return nn.ModuleDict({"standardize": classifier.standardize, "head": classifier.head, **adversary})


def track_finetune(result: "FinetuneResult", tracking: TrackingConfig) -> dict[str, str] | None:
    """A new MLflow run (experiment ``<tracking.experiment>-finetune``) with the settings, the
    per-epoch losses (and validation macro-F1) and the held-out scores; None when ``tracking.enabled`` is off."""
    from sc_fm.tracking import flatten, log_report

    return log_report(tracking, "finetune", result.directory,
                      {"val_accuracy": result.accuracy, "val_macro_f1": result.macro_f1},
                      params=flatten(dataclasses.asdict(result.config)),
                      history=[(r["epoch"], {k: v for k, v in r.items() if k != "epoch"}) for r in result.history])


def save_finetuned(classifier: CellClassifier, pretrained: Pretrained, out_dir: str | Path,
                   config: FinetuneConfig, classes: list[str], batches: list[str],
                   panel: np.ndarray | None = None) -> Path:
    """The encoder as a pretrained directory, plus ``head.safetensors`` and ``finetune.json`` (with
    the context panel as vocabulary gene IDs, null for every gene)."""
    out = Path(out_dir)
    Pretrained(classifier.encoder, pretrained.tokenizer).save(out)
    save_model(_heads(classifier), str(out / HEAD_FILE))
    genes = None if panel is None else [pretrained.vocab.gene_ids[i] for i in panel]
    meta = {"config": dataclasses.asdict(config), "classes": classes, "batches": batches,
            "base_checkpoint": str(pretrained.path), "context_genes": genes}
    (out / FINETUNE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


@dataclass
class Finetuned:
    """A directory written by ``finetune``: the classifier, its encoder, its classes and the
    vocabulary indices its contexts are read on (None: every gene)."""

    classifier: CellClassifier
    pretrained: Pretrained
    classes: list[str]
    panel: np.ndarray | None

    def probabilities(self, adata, inputs: InputSettings, where: str = "input") -> np.ndarray:
        """Class probabilities ``[n_obs, n_classes]`` of new cells, read on the classifier's panel."""
        cells = self.pretrained.input_cells(adata, inputs, where, self.panel)
        return predict(self.classifier, cells.tokenizer, cells.tokenize(), inputs.batch_cells)


def load_finetuned(directory: str | Path) -> Finetuned:
    """A directory written by ``finetune``, ready to classify new cells."""
    directory = Path(directory)
    meta_path = directory / FINETUNE_FILE
    if not meta_path.is_file():
        raise InputDataError(f"no {FINETUNE_FILE} in {directory}", str(directory),
                             "pass a directory written by scfm finetune")
    meta = json.loads(meta_path.read_text())
    pretrained = Pretrained.load(directory)
    classifier = CellClassifier(pretrained.model, len(meta["classes"]), len(meta["batches"]))
    load_model(_heads(classifier), str(directory / HEAD_FILE), strict=True)
    genes = meta.get("context_genes")  # absent in directories written before panels
    if genes is not None and not (isinstance(genes, list) and all(isinstance(g, str) for g in genes)):
        raise InputDataError("context_genes must be a list of gene IDs or null", str(meta_path),
                             "pass the directory scfm finetune wrote, unchanged")
    panel = None if genes is None else pretrained.vocab.lookup(genes)
    if panel is not None and (panel < 0).any():
        raise InputDataError("context_genes holds genes outside the checkpoint's vocabulary", str(meta_path),
                             "pass the directory scfm finetune wrote, unchanged")
    return Finetuned(classifier.eval(), pretrained, meta["classes"], panel)
