"""Fine-tuning heads on the pretrained encoder: cell-type annotation, batch-adversarial integration."""

from sc_fm.config import FinetuneConfig
from sc_fm.finetune.heads import CellClassifier, reverse_gradient
from sc_fm.finetune.splits import group_split
from sc_fm.finetune.train import (PREDICTION_KEY, SPLIT_KEY, Finetuned, FinetuneResult, class_weights, encoder_lr,
                                  finetune, load_finetuned, predict, track_finetune)

__all__ = ["CellClassifier", "FinetuneConfig", "Finetuned", "FinetuneResult", "PREDICTION_KEY", "SPLIT_KEY", "class_weights",
           "encoder_lr", "finetune", "group_split", "load_finetuned", "predict", "reverse_gradient",
           "track_finetune"]
