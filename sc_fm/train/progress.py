"""Progress on rank 0: a tqdm bar with loss, throughput, MFU (``flops.py``), learning rate and ETA."""

from __future__ import annotations

import time


class Throughput:
    """Tokens, cells and model FLOPs per second over the steps since the last report."""

    def __init__(self) -> None:
        self.tokens = 0
        self.cells = 0
        self.flops = 0.0
        self.start = time.perf_counter()

    def add(self, tokens: int, cells: int, flops: float = 0.0) -> None:
        self.tokens += tokens
        self.cells += cells
        self.flops += flops

    def rates(self) -> tuple[float, float, float]:
        """(tokens/s, cells/s, FLOP/s) since the previous call, then restart the window."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rates = (self.tokens / elapsed, self.cells / elapsed, self.flops / elapsed)
        self.tokens = self.cells = 0
        self.flops = 0.0
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
