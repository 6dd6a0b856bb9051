"""Model FLOP utilisation: the FLOPs a training step must do, and the peak of the machine doing it.

One count serves every place that reports MFU (the progress bar, MLflow, ``metrics.jsonl`` and
the benchmarks), so the figures agree. Per optimizer step, over its micro-batches
(docs/train.md gives the formula and why each term is there)::

    6 * N * S                                  weights applied to every encoder token
  + 12 * n_layers * d_model * sum_i L_i^2      attention scores and mixing, per cell, real lengths
  + 6 * H * M                                  gene and value heads, on the M masked tokens only
  + 6 * D * B                                  the cell-level decoder, once per cell (when on)

N counts the encoder's non-embedding parameters (blocks, final norm, the value encoder's MLP;
gene, bin and condition tables and the tied gene head excluded), S the encoder's tokens
(condition tokens included when the encoder reads them), L_i each cell's encoder length,
H the heads' weights, D the decoder's dense weights (its per-condition gene offsets are table
look-ups), B the cells. The factor 6 is 2 FLOPs per multiply-add times forward plus a backward
of twice the forward; recomputation under activation checkpointing is not counted (it is
hardware FLOPs, not model FLOPs).

The peak: on CUDA the device's published dense bf16 tensor-core figure (``GPU_BF16_PEAKS``, the
one table of them); on the CPU the fp32 rate of a large square matmul measured on this machine
(``measure_cpu_peak``), since CPU vendors publish nothing comparable for a given core count.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
from torch import nn

from sc_fm.batch import IGNORE_INDEX

# Dense (not sparse) bf16 tensor-core peak FLOP/s, matched against torch.cuda.get_device_name in
# order (the more specific name first). MFU is omitted on a GPU that is not listed.
GPU_BF16_PEAKS: tuple[tuple[str, float], ...] = (
    ("B200", 2250e12), ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H800", 989e12),
    ("GH200", 989e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12),
    ("A10G", 70e12), ("A10", 125e12), ("L4", 121e12), ("RTX 4090", 165e12), ("A6000", 155e12),
)


def gpu_bf16_peak(name: str) -> float | None:
    """The dense bf16 peak of a CUDA device name, or None when it is not in the table."""
    return next((flops for key, flops in GPU_BF16_PEAKS if key in name), None)


def measure_cpu_peak(size: int = 1024, repeats: int = 10, cached: bool = True) -> float:
    """fp32 FLOP/s of ``size x size`` matmuls with this process's torch threads (best of ``repeats``).

    Best rather than median: other load on a shared machine only ever slows a run down, and
    the peak is what the hardware can do; more repeats catch a quieter moment (benchmarks take
    more). Cached per thread count and size (about 0.2 s at 1024 on 2 cores) unless ``cached``
    is False.
    """
    rate = _matmul_rate if cached else _matmul_rate.__wrapped__
    return rate(size, repeats, torch.get_num_threads())


@functools.cache
def _matmul_rate(size: int, repeats: int, threads: int) -> float:
    generator = torch.Generator().manual_seed(0)  # not the global one: a run's seeded stream stays put
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    a @ b  # warm-up: thread pool start and page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def raised_cpu_peak(previous: float, achieved: float) -> float:
    """The CPU peak after a step ran at ``achieved`` FLOP/s: a step well above the peak shows
    the peak was measured while other load slowed the machine (an MFU above 100% otherwise), so
    it is measured again, uncached, and the larger kept. A step can exceed a sound peak only by
    the timing noise of its short window: up to 10% above it the peak just rises to ``achieved``,
    so noise never costs a measurement per step; the result is always at least ``achieved``."""
    if achieved <= previous:
        return previous
    if achieved <= 1.1 * previous:
        return achieved
    return max(achieved, measure_cpu_peak(cached=False))


def peak_flops(device: torch.device) -> float | None:
    """Peak FLOP/s of one process's device: the bf16 table on CUDA, measured fp32 on the CPU."""
    if device.type == "cuda":
        return gpu_bf16_peak(torch.cuda.get_device_name(device))
    if device.type == "cpu":
        return measure_cpu_peak()
    return None


def _weights(modules: list[nn.Module | None]) -> int:
    """Parameters of ``modules`` outside embedding tables, each counted once."""
    seen: dict[int, int] = {}
    for module in modules:
        if module is None:
            continue
        tables = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
        seen.update({id(p): p.numel() for p in module.parameters() if id(p) not in tables})
    return sum(seen.values())


@dataclass(frozen=True)
class StepFlops:
    """The FLOP count of ``MaskedGeneTransformer`` batches (module docstring), built once per model."""

    encoder_weights: int  # N
    head_weights: int  # H
    decoder_weights: int  # D
    n_layers: int
    d_model: int
    condition_tokens: int  # per cell, in the encoder

    @classmethod
    def of(cls, model: nn.Module) -> "StepFlops":
        decoder = getattr(model, "decoder", None)
        return cls(encoder_weights=_weights([model.embedding, model.blocks, model.norm]),
                   head_weights=_weights([model.gene_head, model.value_head]),  # the tied gene matrix too
                   decoder_weights=_weights([decoder]),
                   n_layers=model.config.n_layers, d_model=model.config.d_model,
                   condition_tokens=model.conditions.n_keys)

    def batch(self, batch: dict) -> float:
        """Training FLOPs (forward + backward) of one micro-batch in the batch contract."""
        lengths = batch["cu_seqlens"].diff().double() + self.condition_tokens
        masked = int((batch["labels"] != IGNORE_INDEX).sum())
        return 6.0 * (self.encoder_weights * float(lengths.sum()) + self.head_weights * masked
                      + self.decoder_weights * len(lengths)) \
            + 12.0 * self.n_layers * self.d_model * float((lengths ** 2).sum())

    def step(self, micro_batches: list[dict]) -> float:
        return sum(self.batch(b) for b in micro_batches)
