"""Open a pretrained directory for inference, refusing pieces that do not belong together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sc_fm.errors import InputDataError
from sc_fm.tokenize import CellTokenizer


@dataclass
class Pretrained:
    """A model with the tokenizer it was trained with, and a display name (``sc_fm-<size>``)."""

    model: torch.nn.Module
    tokenizer: CellTokenizer
    path: Path

    @property
    def name(self) -> str:
        return f"sc_fm-{self.model.config.size}"


def load_checkpoint(path: str | Path) -> Pretrained:
    """``load_pretrained`` plus a check that the model, vocabulary and tokenizer agree."""
    from sc_fm.model import load_pretrained

    path = Path(path)
    model, vocab, tokenizer = load_pretrained(path)
    n_tokens = model.init_args["n_tokens"]
    if tokenizer.vocab.hash != vocab.hash or tokenizer.model_inputs["n_tokens"] != n_tokens:
        raise InputDataError(f"the tokenizer's vocabulary ({tokenizer.vocab.hash}) is not the model's "
                             f"({vocab.hash})", str(path),
                             "use a directory written by one pretraining run (RUN_DIR/final)")
    return Pretrained(model.eval(), tokenizer, path)
