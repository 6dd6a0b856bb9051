"""The pre-norm transformer block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sc_fm.model.attention import PackedCells, SelfAttention


def make_norm(kind: str, d_model: int) -> nn.Module:
    """``rmsnorm`` (no mean subtraction, no bias) or ``layernorm``."""
    return nn.RMSNorm(d_model, eps=1e-6) if kind == "rmsnorm" else nn.LayerNorm(d_model, eps=1e-6)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``, gate and up fused into one matmul."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_ff)
        self.down = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class GeluMLP(nn.Module):
    """``down(gelu(up(x)))``, the BERT feed-forward."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """One pre-norm encoder layer over packed tokens ``[T, d]``."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, norm: str, mlp: str,
                 attention: str, dropout: float):
        super().__init__()
        self.attn_norm = make_norm(norm, d_model)
        self.attn = SelfAttention(d_model, n_heads, attention, dropout)
        self.mlp_norm = make_norm(norm, d_model)
        self.mlp = SwiGLU(d_model, d_ff) if mlp == "swiglu" else GeluMLP(d_model, d_ff)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cells: PackedCells) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), cells))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))
