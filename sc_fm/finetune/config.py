"""Settings of one fine-tuning run (``scfm finetune`` options); saved beside its checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class FinetuneConfig:
    label_key: str
    split_key: str | None = None  # donor/batch column whose groups are held out; None: random split
    batch_key: str | None = None  # per-batch normalisers and the adversary's target
    mode: Literal["full", "linear"] = "full"  # "linear": frozen encoder, head only (linear probe)
    epochs: int = 10
    batch_cells: int = 16
    lr: float = 1e-5  # encoder; small, so the pretrained weights move slowly
    head_lr: float = 1e-2
    weight_decay: float = 0.01
    val_fraction: float = 0.2
    adversarial_weight: float = 0.0  # > 0: batch-adversarial integration objective (needs batch_key)
    min_gene_overlap: float = 0.1
    seed: int = 0
