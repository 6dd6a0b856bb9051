"""Parameter counts: of a model, by component, and for every size preset.

``python -m sc_fm.model`` prints the table of presets for the shipped vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from sc_fm.config import ModelConfig
from sc_fm.model.transformer import MaskedGeneTransformer

SIZES = ("tiny", "small", "base", "large")


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters())


def parameters_by_component(model: MaskedGeneTransformer) -> dict[str, int]:
    """Embeddings (gene, value, condition), transformer blocks, and heads, each counted once."""
    return {"embeddings": count_parameters(model.embedding) + count_parameters(model.conditions),
            "blocks": count_parameters(model.blocks) + count_parameters(model.norm),
            "heads": count_parameters(model) - count_parameters(model.embedding)
            - count_parameters(model.conditions) - count_parameters(model.blocks)
            - count_parameters(model.norm)}


def size_table(n_tokens: int, value_encoding: str = "continuous", n_bins: int = 51,
               condition_sizes: tuple[int, ...] = (8, 64)) -> str:
    """A printable table of the presets' shapes and parameter counts (built on the meta device)."""
    rows = [f"{'size':<6} {'layers':>6} {'d_model':>7} {'n_heads':>7} {'d_ff':>5} "
            f"{'embeddings':>11} {'blocks':>11} {'out_heads':>10} {'total':>12}"]
    for size in SIZES:
        with torch.device("meta"):
            model = MaskedGeneTransformer(ModelConfig(size=size), n_tokens, value_encoding, n_bins,
                                          list(condition_sizes))
        c, parts = model.config, parameters_by_component(model)
        rows.append(f"{size:<6} {c.n_layers:>6} {c.d_model:>7} {c.n_heads:>7} {c.d_ff:>5} "
                    f"{parts['embeddings']:>11,} {parts['blocks']:>11,} {parts['heads']:>10,} "
                    f"{count_parameters(model):>12,}")
    return "\n".join(rows)

