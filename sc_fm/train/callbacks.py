"""What the engine calls back into: evaluation arrives from outside, never built by the engine.

``scfm pretrain`` passes an ``EvaluatorFactory`` (e.g. ``PretrainEvaluator`` over the held-out
real cells); the trainer builds it once from the run's tokenizer on rank 0, logs its baseline
metrics at step 0 and calls it with a standalone copy of the weights every
``train.eval_every`` steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import nn

from sc_fm.tokenize import CellTokenizer


class Evaluator(Protocol):
    """Scores a model; ``baseline_metrics`` are the reference rows (PCA, scVI) computed once."""

    @property
    def baseline_metrics(self) -> dict[str, float]: ...

    def __call__(self, model: nn.Module) -> dict[str, float]: ...


EvaluatorFactory = Callable[[CellTokenizer], Evaluator]
