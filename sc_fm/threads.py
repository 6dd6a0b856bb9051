"""CPU threads of a process that computes with torch: how they wait, and how many there are.

Every model verb runs torch's OpenMP threads (pretraining, adaptation, embedding,
fine-tuning). An OpenMP parallel region ends only when its slowest thread does, so what
matters on a machine that is not the run's alone is what a thread does while it waits for
the others:

- **Waiting: a short spin, then sleep.** By default libgomp spins up to 300,000 rounds
  between regions. A spinning thread burns its time slice, the scheduler deschedules it
  mid-region, and every region then waits for it: beside one other CPU-bound process the
  tiny model's step fell 10-40x. A thread that sleeps at once (``OMP_WAIT_POLICY=PASSIVE``)
  survives contention, but pays a wake-up per region: alone, the tiny step ran 0.6-0.7x as
  fast. ``GOMP_SPINCOUNT=6000`` spins through the short gaps between the regions of one step
  and sleeps through longer ones: the tiny step on full-length cells ran at 0.96-0.98x the
  default's speed alone, and kept 0.42-0.48x its own speed beside a CPU-bound process (medians
  of three runs, docs/train.md, *CPU threads*). libgomp reads it once, when torch loads:
  ``sc_fm`` sets it on import (``bound_openmp_spin``), unless the user set ``GOMP_SPINCOUNT``
  or ``OMP_WAIT_POLICY``, or torch came first.
- **How many: this process's share of the cores it may use.** The cores of its affinity mask
  (which ``taskset``, a container or SLURM's cpuset narrows), capped by its cgroup's CPU quota
  (a quota below the mask throttles every thread for the rest of the period), divided among
  the ranks of the job that share those cores. Those ranks are counted through the process
  group when there is one (``ranks_sharing_cores``): the launcher's ``LOCAL_WORLD_SIZE`` misses
  the ranks of a second "node" on the same host. ``OMP_NUM_THREADS`` set by the user wins.
- **Less what others keep busy at its start.** A core that other processes kept busy over a
  short sample of ``/proc/stat`` at the start (``busy_cores``) is left to them. Two processes
  with a thread per core each thrash: every region of each waits for a thread the other's
  threads displaced (a second ``scfm pretrain`` beside the first kept 0.22x of its speed).
  Started beside a busy core, the second run takes the cores that are free, and the first keeps
  about half its speed (docs/train.md, *CPU threads*).
- **Fixed for the run.** The count is decided once. A resumed pretraining reuses the count its
  checkpoint recorded (``rank_R.json``), since results are bit-identical only at the same count.

Set-up follows the same rule: the co-expression start's numpy products on the main thread leave
one core of the share to the set-up thread beside them (``setup_blas_threads``).

This module sits below the engine and the verbs: of ``sc_fm`` it imports only the error classes.
"""

from __future__ import annotations

import math
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sc_fm.errors import ConfigError

SPIN_COUNT = "6000"  # libgomp's spins before a waiting thread sleeps (its default: 300,000)
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_STAT = Path("/proc/stat")
BUSY_SAMPLE_S = 0.2  # long enough for 20 scheduler ticks per core at Linux's 100 Hz accounting
# a core counts as taken when others kept it busy at least this much of the sample: a core kept
# half busy by an editor or a shell still has room for a thread of ours
BUSY_CORE = 0.75


def bound_openmp_spin() -> None:
    """Ask libgomp for a short spin before a waiting thread sleeps (module docstring). A no-op
    when the user set ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``, or torch was imported first
    (its runtime has read the environment already; ``ThreadPlan.describe`` then says so)."""
    if "torch" not in sys.modules and not (os.environ.get("GOMP_SPINCOUNT") or os.environ.get("OMP_WAIT_POLICY")):
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT


def openmp_wait() -> str:
    """How this process's OpenMP threads wait, in words (for the run's first line)."""
    policy, spins = os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT")
    if policy:
        return f"OpenMP wait policy {policy}" + (f", GOMP_SPINCOUNT {spins}" if spins else "")
    return f"OpenMP threads spin {spins} rounds, then sleep" if spins else "OpenMP wait: libgomp's default spin"


def affinity_cores() -> set[int]:
    """The cores this process may run on (its affinity mask)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


def _words(path: Path) -> list[str] | None:
    try:
        return path.read_text().split()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_v2(folder: Path) -> float | None:
    """``cpu.max`` holds ``QUOTA PERIOD`` in microseconds, ``max`` for no quota."""
    fields = _words(folder / "cpu.max")
    if not fields or len(fields) != 2 or fields[0] == "max":
        return None
    try:
        return int(fields[0]) / int(fields[1])
    except (ValueError, ZeroDivisionError):
        return None


def _quota_v1(folder: Path) -> float | None:
    """``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``; a quota of -1 is none."""
    quota, period = _words(folder / "cpu.cfs_quota_us"), _words(folder / "cpu.cfs_period_us")
    try:
        value, length = int(quota[0]), int(period[0])  # type: ignore[index]
    except (TypeError, IndexError, ValueError):
        return None
    return value / length if value > 0 and length > 0 else None


def cgroup_quota(root: Path = CGROUP_ROOT, membership: str | None = None) -> float | None:
    """The CPU quota of this process in cores (the smallest along its cgroup and their parents,
    v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``); None when there is none.

    ``membership`` is ``/proc/self/cgroup``'s text. Inside a container the path it names may
    not exist in the container's view; the folders that do exist are read, the root included.
    """
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:  # not Linux
            return None
    quotas: list[float] = []
    for line in membership.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base, read = root, _quota_v2
        elif "cpu" in controllers.split(","):
            base, read = root / controllers, _quota_v1
        else:
            continue
        folder = Path(path.strip("/"))
        for part in [folder, *folder.parents]:
            quota = read(base / part)
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def host_identity() -> tuple[str, tuple[int, ...]]:
    """What tells two processes that they share cores: the kernel they run on (its boot id,
    which containers on one host share; else the host name) and their affinity masks."""
    boot = _words(Path("/proc/sys/kernel/random/boot_id"))
    return (boot[0] if boot else socket.gethostname()), tuple(sorted(affinity_cores()))


def sharing(mine: tuple[str, tuple[int, ...]], everyone: list[tuple[str, tuple[int, ...]]]) -> int:
    """How many of ``everyone`` (``host_identity`` of each rank, this one included) run on this
    host on cores that overlap this rank's."""
    return max(1, sum(host == mine[0] and not set(cores).isdisjoint(mine[1]) for host, cores in everyone))


def ranks_sharing_cores() -> int:
    """The ranks of this job that share this process's cores: compared through the process group
    when one is up (collective: every rank must call it), else the launcher's
    ``LOCAL_WORLD_SIZE`` (1 unlaunched)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        everyone: list = [None] * dist.get_world_size()
        mine = host_identity()
        dist.all_gather_object(everyone, mine)
        return sharing(mine, [(host, tuple(cores)) for host, cores in everyone])
    text = os.environ.get("LOCAL_WORLD_SIZE", "1")
    try:
        return max(1, int(text))
    except ValueError as err:
        raise ConfigError(f"environment variable LOCAL_WORLD_SIZE={text!r} is not an integer", "environment",
                          "launch through launch/local.sh, torchrun or deepspeed, or unset it") from err


def core_times(cores: set[int], stat: Path = PROC_STAT) -> dict[int, tuple[int, int]]:
    """``{core: (idle, total)}`` scheduler ticks since boot, from ``/proc/stat``'s ``cpuN`` lines
    (idle includes iowait; guest time is already inside user time); empty where unreadable."""
    times: dict[int, tuple[int, int]] = {}
    try:
        lines = stat.read_text().splitlines()
    except OSError:  # not Linux
        return times
    for line in lines:
        name, *fields = line.split() or [""]
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores and len(fields) >= 5
                and all(f.isdigit() for f in fields[:8])):
            continue
        ticks = [int(f) for f in fields[:8]]
        times[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
    return times


def busy_between(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> float:
    """Cores' worth of time spent busy between two ``core_times`` samples."""
    busy = 0.0
    for core, (idle_after, total_after) in after.items():
        idle_before, total_before = before.get(core, (idle_after, total_after))
        elapsed = total_after - total_before
        if elapsed > 0:
            busy += 1.0 - (idle_after - idle_before) / elapsed
    return busy


def busy_cores(cores: set[int], seconds: float = BUSY_SAMPLE_S) -> int:
    """How many of ``cores`` other processes keep busy: sampled over ``seconds`` while this
    process sleeps (so, in a job, every rank samples at once, after the collective that counted
    them, and none counts another)."""
    import time

    before = core_times(cores)
    time.sleep(seconds)
    return int(busy_between(before, core_times(cores)) + (1.0 - BUSY_CORE))


def share_of_cores(cores: int, quota: float | None, ranks: int, busy: int = 0) -> int:
    """Intra-op threads for one process: the cores it may use (mask, capped by the quota rounded
    down) less those others keep ``busy``, divided among the ``ranks`` that share them; at least one."""
    usable = cores if quota is None else min(cores, max(1, math.floor(quota)))
    return max(1, (usable - max(busy, 0)) // max(ranks, 1))


@dataclass(frozen=True)
class ThreadPlan:
    """The thread count of one run and what it came from (printed at the start of a run)."""

    threads: int
    cores: int
    quota: float | None
    ranks: int
    busy: int  # cores other processes kept busy at the start
    source: str = "policy"  # "policy", "OMP_NUM_THREADS" or "checkpoint" (a resumed run's count)

    @classmethod
    def here(cls, ranks: int = 1, saved: int | None = None) -> "ThreadPlan":
        """This process's plan; ``saved`` is the count a resumed run recorded, which it keeps."""
        import torch

        mask, quota = affinity_cores(), cgroup_quota()
        if os.environ.get("OMP_NUM_THREADS"):
            return cls(torch.get_num_threads(), len(mask), quota, ranks, 0, "OMP_NUM_THREADS")
        if saved is not None:
            return cls(saved, len(mask), quota, ranks, 0, "checkpoint")
        busy = busy_cores(mask)
        return cls(share_of_cores(len(mask), quota, ranks, busy), len(mask), quota, ranks, busy)

    def describe(self) -> str:
        wait = openmp_wait()
        if self.source == "OMP_NUM_THREADS":
            return f"{self.threads} CPU thread(s) per process: OMP_NUM_THREADS; {wait}"
        if self.source == "checkpoint":
            return (f"{self.threads} CPU thread(s) per process: the count the resumed checkpoint recorded; "
                    f"{wait}")
        quota = f", CPU quota {self.quota:g}" if self.quota is not None else ""
        busy = f", {self.busy} kept busy by other processes" if self.busy else ""
        return (f"{self.threads} CPU thread(s) per process: {self.cores} core(s){quota}{busy}, shared by "
                f"{self.ranks} process(es) of this run on this host; {wait}")


@contextmanager
def cpu_threads(ranks: int = 1, saved: int | None = None) -> Iterator[ThreadPlan]:
    """torch's intra-op threads set to ``ThreadPlan.here(ranks, saved)`` for the block, then restored.

    Fixed for the block: the load is sampled once, at its start (module docstring)."""
    import torch

    previous = torch.get_num_threads()
    plan = ThreadPlan.here(ranks, saved)
    torch.set_num_threads(plan.threads)
    try:
        yield plan
    finally:
        torch.set_num_threads(previous)


@contextmanager
def setup_blas_threads(beside_setup_thread: bool) -> Iterator[int]:
    """numpy's BLAS threads for set-up work on the main thread: this process's share of the cores
    (``torch.get_num_threads()``, not every core of the machine, which each local rank would
    claim), one fewer while the set-up thread imports DeepSpeed or opens the MLflow run.

    That thread is interpreter work on one core. With the co-expression products' OpenBLAS
    threads on every core as well, three threads shared the demo's 2 cores and DeepSpeed's import
    took 9.5 s instead of 6.6 s, on the start-up's longest path; the products lost less, off it.
    """
    import torch
    from threadpoolctl import threadpool_limits  # scikit-learn's; it sets OpenBLAS and MKL alike

    threads = max(1, torch.get_num_threads() - (1 if beside_setup_thread else 0))
    with threadpool_limits(threads, user_api="blas"):
        yield threads
