"""Progress on rank 0: a tqdm bar with loss, throughput, learning rate and ETA (MFU on GPU)."""

from __future__ import annotations

import time

import torch

# Dense bf16/fp16 tensor-core peak FLOP/s by device-name fragment; MFU is omitted elsewhere.
_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
               "L4": 121e12, "V100": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in _PEAK_FLOPS.items() if key in name), None)


def flops_per_token(n_params: int, n_layers: int, d_model: int, mean_seq_len: float) -> float:
    """Training FLOPs per token: 6N for the weights plus 12 L d s for attention scores."""
    return 6.0 * n_params + 12.0 * n_layers * d_model * mean_seq_len


class Throughput:
    """Tokens and cells per second over the steps since the last report."""

    def __init__(self) -> None:
        self.tokens = 0
        self.cells = 0
        self.start = time.perf_counter()

    def add(self, tokens: int, cells: int) -> None:
        self.tokens += tokens
        self.cells += cells

    def rates(self) -> tuple[float, float]:
        """(tokens/s, cells/s) since the previous call, then restart the window."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rates = (self.tokens / elapsed, self.cells / elapsed)
        self.tokens = self.cells = 0
        self.start = time.perf_counter()
        return rates


class ProgressBar:
    """The rank-0 bar; other ranks pass ``enabled=False`` and print nothing."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="pretrain", unit="step", dynamic_ncols=True)

    def update(self, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        shown = {"loss": f"{metrics['loss']:.4f}", "tok/s": f"{metrics['tokens_per_s']:,.0f}",
                 "cells/s": f"{metrics['cells_per_s']:,.0f}", "lr": f"{metrics['lr']:.2e}"}
        if "mfu" in metrics:
            shown["mfu"] = f"{100 * metrics['mfu']:.1f}%"
        self.bar.set_postfix(shown, refresh=False)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
