"""CPU thread budget: the training step's intra-op threads take every core of their share.

PyTorch starts one OpenMP thread per core. An OpenMP parallel region ends only when its slowest
thread does, so when any other process takes one of those cores (a DataLoader worker
tokenising its next fetch, gloo, a second rank, someone else's job) every region of the step
waits for a descheduled thread: on 2 cores with one loader worker at normal priority the tiny
model's step went from about 0.5 s to 4-6 s and back, which the progress bar showed as
stalls. The loader workers of a CPU run therefore run at idle priority
(``sc_fm.data.loader.run_on_idle_cores``), in the gaps the step leaves, and the step's
threads are the cores this process may use, shared among the local ranks.
``OMP_NUM_THREADS`` set by the user wins.

Set-up follows the same rule: the co-expression start's numpy products on the main thread leave
one core of the share to the set-up thread beside them (``setup_blas_threads``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_processes() -> int:
    """Training processes on this machine (the launchers' ``LOCAL_WORLD_SIZE``; 1 unlaunched)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def step_threads(local_processes: int = 1, cores: int | None = None) -> int:
    """Intra-op threads for one training process: its share of the cores."""
    return max(1, (available_cores() if cores is None else cores) // max(local_processes, 1))


def budget_cpu_threads() -> int | None:
    """Set torch's intra-op threads for a CPU run; returns the number set, None if the user chose."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    threads = step_threads(local_processes())
    torch.set_num_threads(threads)
    return threads


@contextmanager
def setup_blas_threads(beside_setup_thread: bool) -> Iterator[int]:
    """numpy's BLAS threads for set-up work on the main thread: this process's share of the cores
    (``torch.get_num_threads()``, not every core of the machine, which each local rank would
    claim), one fewer while the set-up thread imports DeepSpeed or opens the MLflow run.

    That thread is interpreter work on one core. With the co-expression products' OpenBLAS
    threads on every core as well, three threads shared the demo's 2 cores and DeepSpeed's import
    took 9.5 s instead of 6.6 s, on the start-up's longest path; the products lost less, off it.
    """
    from threadpoolctl import threadpool_limits  # scikit-learn's; it sets OpenBLAS and MKL alike

    threads = max(1, torch.get_num_threads() - (1 if beside_setup_thread else 0))
    with threadpool_limits(threads, user_api="blas"):
        yield threads
