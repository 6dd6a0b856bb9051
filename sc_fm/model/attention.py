"""Multi-head self-attention over packed cells, with four interchangeable backends.

Cells arrive packed back to back (``qkv [T, 3, H, D]`` with ``cu_seqlens``); a token attends
only to tokens of its own cell. The backends compute the same function and differ only in speed:

- ``varlen``: PyTorch's own FlashAttention-2 for packed variable-length batches,
  ``torch.nn.attention.varlen.varlen_attn`` (PyTorch >= 2.10, CUDA, fp16/bf16; no attention
  dropout): FlashAttention speed with a stock PyTorch wheel and nothing to compile.
- ``flash``: flash-attn 2 ``flash_attn_varlen_qkvpacked_func`` on the packed tokens (CUDA,
  fp16/bf16), for installations that have the ``flash-attn`` package.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` once per run of neighbouring
  cells of one length, on 4-D ``[n, H, L, D]`` views of the pack (4-D without a mask is what
  reaches PyTorch's fused CPU kernel). Work is ``sum(L_i^2)``: on CPU this beats a padded
  ``[B, H, L_max, D]`` call with a key-padding mask (``B * L_max^2``) and, by far, one call with
  a block-diagonal mask over the whole pack (``T^2``); ``benchmarks/model.py`` measures all
  three. Cells that fill the context (every shipped cell at ``max_len`` 128) come as one run:
  one call instead of one per cell, bit-identical, since the kernel treats each (cell, head)
  alone, and far fewer parallel regions for the CPU threads to meet in.
- ``math``: the reference: ``softmax(q k^T / sqrt(d)) v`` written out, cell by cell.

``auto`` picks, for CUDA tensors in half precision, ``varlen`` when this PyTorch has it (and
attention dropout is off), else ``flash`` when flash-attn imports; everything else gets ``sdpa``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sc_fm.errors import ConfigError


@dataclass
class PackedCells:
    """Where each cell lives in a packed tensor; per-token indices are built on first use."""

    cu_seqlens: torch.Tensor  # int32 [B+1]
    max_seqlen: int

    @functools.cached_property
    def lengths(self) -> torch.Tensor:
        return self.cu_seqlens.diff().long()

    @functools.cached_property
    def cell_of_token(self) -> torch.Tensor:
        """Cell number of every packed token, ``[T]``."""
        n_cells = len(self.cu_seqlens) - 1
        cells = torch.arange(n_cells, device=self.cu_seqlens.device)
        return torch.repeat_interleave(cells, self.lengths)

    @functools.cached_property
    def position_in_cell(self) -> torch.Tensor:
        """Offset of every packed token from the start of its cell, ``[T]``."""
        starts = self.cu_seqlens[:-1].long()
        return torch.arange(len(self.cell_of_token), device=starts.device) - starts[self.cell_of_token]

    @functools.cached_property
    def length_runs(self) -> list[tuple[int, int]]:
        """``(length, cells)`` of each run of neighbouring cells of one length, in pack order."""
        return [(length, len(list(run))) for length, run in itertools.groupby(self.split_sizes)]

    @functools.cached_property
    def split_sizes(self) -> list[int]:
        """Cell lengths as Python ints for ``torch.split`` (one device sync per batch).

        ``split`` rather than slicing: its backward is one concatenation, where the backward of
        each slice would write a zero-filled gradient of the whole pack.
        """
        return self.lengths.tolist()


AttentionFn = Callable[[torch.Tensor, PackedCells, float], torch.Tensor]


def math_attention(qkv: torch.Tensor, cells: PackedCells, dropout_p: float = 0.0) -> torch.Tensor:
    """Reference attention, one cell at a time, softmax in fp32. ``qkv [T, 3, H, D]`` -> ``[T, H, D]``."""
    scale = qkv.shape[-1] ** -0.5
    outputs = []
    for cell in qkv.split(cells.split_sizes):
        qc, kc, vc = cell.permute(1, 2, 0, 3).unbind(0)  # each [H, L, D]
        scores = (qc @ kc.transpose(-1, -2)).float() * scale
        probs = F.dropout(torch.softmax(scores, dim=-1), dropout_p).to(vc.dtype)
        outputs.append((probs @ vc).transpose(0, 1))
    return torch.cat(outputs)


def sdpa_attention(qkv: torch.Tensor, cells: PackedCells, dropout_p: float = 0.0) -> torch.Tensor:
    """PyTorch SDPA once per run of equal-length cells (module docstring says why) on strided
    views of the pack.

    ``[n, H, L, D]`` views straight into ``qkv`` (no head-major copy of the pack: the fused
    kernel reads strides), and its output, laid out ``[n, L, H, D]``, concatenates into a
    contiguous ``[T, H, D]``, so the output projection needs no copy either.
    """
    runs = cells.length_runs
    _, n_heads, head_dim = qkv.shape[1:]
    outputs = []
    for (length, n), run in zip(runs, qkv.split([length * n for length, n in runs])):
        q, k, v = (t.transpose(1, 2) for t in run.view(n, length, 3, n_heads, head_dim).unbind(2))
        mixed = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)  # [n, H, L, D]
        outputs.append(mixed.transpose(1, 2).reshape(n * length, n_heads, head_dim))
    return torch.cat(outputs)


@functools.cache
def _flash_varlen() -> Callable | None:
    try:
        from flash_attn import flash_attn_varlen_qkvpacked_func
    except ImportError:
        return None
    return flash_attn_varlen_qkvpacked_func


def _require_half_cuda(qkv: torch.Tensor, backend: str) -> None:
    if not qkv.is_cuda or qkv.dtype not in (torch.float16, torch.bfloat16):
        raise ConfigError(f"model.attention={backend} needs CUDA tensors in fp16/bf16, got {qkv.dtype} "
                          f"on {qkv.device}", "config",
                          "train with train.precision=bf16 on a GPU, or set model.attention=auto")


def flash_attention(qkv: torch.Tensor, cells: PackedCells, dropout_p: float = 0.0) -> torch.Tensor:
    """flash-attn 2 on the packed tokens; no padding anywhere."""
    varlen = _flash_varlen()
    if varlen is None:
        raise ConfigError("model.attention=flash but flash-attn is not installed", "config",
                          "install it with pip install 'sc_fm[gpu]' on a CUDA machine, "
                          "or set model.attention=auto")
    _require_half_cuda(qkv, "flash")
    cu_seqlens = cells.cu_seqlens.to(torch.int32)
    return varlen(qkv, cu_seqlens, cells.max_seqlen, dropout_p=dropout_p, causal=False)


@functools.cache
def _torch_varlen() -> Callable | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def varlen_attention(qkv: torch.Tensor, cells: PackedCells, dropout_p: float = 0.0) -> torch.Tensor:
    """PyTorch's FlashAttention-2 on the packed tokens (``torch.nn.attention.varlen``)."""
    varlen = _torch_varlen()
    if varlen is None:
        raise ConfigError(f"model.attention=varlen needs PyTorch 2.10 or later, this is {torch.__version__}",
                          "config", "upgrade torch, or set model.attention=auto")
    if dropout_p > 0:
        raise ConfigError(f"model.attention=varlen has no attention dropout (model.dropout={dropout_p})",
                          "config", "set model.dropout=0, or model.attention=flash or sdpa")
    _require_half_cuda(qkv, "varlen")
    cu_seqlens = cells.cu_seqlens.to(torch.int32)
    q, k, v = qkv.unbind(1)
    return varlen(q, k, v, cu_seqlens, cu_seqlens, cells.max_seqlen, cells.max_seqlen)


BACKENDS: dict[str, AttentionFn] = {"varlen": varlen_attention, "flash": flash_attention,
                                    "sdpa": sdpa_attention, "math": math_attention}


def select_backend(name: str, qkv: torch.Tensor, dropout_p: float = 0.0) -> AttentionFn:
    """The attention function for ``model.attention`` given where and in what dtype ``qkv`` lives."""
    if name == "auto":
        name = "sdpa"
        if qkv.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16):
            if _torch_varlen() is not None and dropout_p == 0:
                name = "varlen"
            elif _flash_varlen() is not None:
                name = "flash"
    return BACKENDS[name]


class SelfAttention(nn.Module):
    """Fused QKV projection, per-cell attention via the configured backend, output projection."""

    def __init__(self, d_model: int, n_heads: int, backend: str, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.backend = backend
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, cells: PackedCells) -> torch.Tensor:
        n_tokens, d_model = x.shape
        qkv = self.qkv(x).view(n_tokens, 3, self.n_heads, d_model // self.n_heads)
        dropout_p = self.dropout if self.training else 0.0
        mixed = select_backend(self.backend, qkv, dropout_p)(qkv, cells, dropout_p)
        return self.out(mixed.reshape(n_tokens, d_model))
