"""Peak resident memory (sampled in a thread) and CPU time of a benchmark's process tree."""

from __future__ import annotations

import threading

import psutil


class PeakRSS:
    """Samples the summed RSS of this process and its children every ``every_s`` seconds."""

    def __init__(self, every_s: float = 0.05):
        self.every_s, self.peak = every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every_s)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process tree, including children that have ended.

    A process's ``children_*`` times hold its reaped children, so workers that end inside the
    timed window are counted too (DataLoader workers restarted every epoch, ingestion workers
    reaped by their fork server).
    """
    total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            pass
    return total
