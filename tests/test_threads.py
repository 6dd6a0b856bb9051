"""The CPU thread policy (sc_fm/threads.py): its decisions from cores, quota and ranks, the
co-located ranks seen through the process group, a user's ``OMP_NUM_THREADS`` and
``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT``, and the set-up's BLAS threads. No timings: those are in
benchmarks/contention.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy  # noqa: F401 (its OpenBLAS is what setup_blas_threads limits)
import pytest
import torch
from threadpoolctl import threadpool_info

from sc_fm.errors import ConfigError
from sc_fm.threads import (ThreadPlan, busy_between, busy_cores, cgroup_quota, core_times, cpu_threads,
                           ranks_sharing_cores, setup_blas_threads, share_of_cores, sharing)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("cores, quota, ranks, busy, threads", [
    (2, None, 1, 0, 2),     # the whole mask
    (16, None, 2, 0, 8),    # two ranks of the job on these cores
    (2, None, 3, 0, 1),     # more ranks than cores: one thread each
    (16, 4.0, 1, 0, 4),     # a quota below the mask caps it
    (16, 1.5, 1, 0, 1),     # a fractional quota rounds down: a second thread would be throttled
    (2, 0.5, 1, 0, 1),      # never below one thread
    (16, 6.0, 2, 0, 3),     # quota and ranks together
    (8, 32.0, 1, 0, 8),     # a quota above the mask changes nothing
    (2, None, 1, 1, 1),     # a second run beside a first that keeps one core busy
    (2, None, 1, 2, 1),     # every core busy: still one thread
    (16, None, 2, 4, 6),    # busy cores leave the rest to the job's ranks
    (16, 4.0, 1, 3, 1),     # busy cores count against the quota's cores too
])
def test_threads_are_the_share_of_the_usable_cores(cores, quota, ranks, busy, threads):
    assert share_of_cores(cores, quota, ranks, busy) == threads


STAT = """cpu  {total}
cpu0 {c0}
cpu1 {c1}
cpu2 {c2}
cpu3 1 2
intr 12345

"""  # cpu3: a line too short to read is left out, as is the blank line


def stat_file(tmp_path: Path, name: str, cores: list[tuple[int, int]]) -> Path:
    """A ``/proc/stat`` whose core i spent ``cores[i]`` = (busy, idle) ticks (busy as user time)."""
    def line(busy: int, idle: int) -> str:
        return f"{busy} 0 0 {idle} 0 0 0 0 0 0"
    path = tmp_path / name
    path.write_text(STAT.format(total=line(0, 0), **{f"c{i}": line(*c) for i, c in enumerate(cores)}))
    return path


def test_busy_cores_are_read_from_proc_stat(tmp_path):
    before = stat_file(tmp_path, "before", [(100, 100), (100, 100), (100, 100)])
    # over the sample: core 0 busy throughout, core 1 idle, core 2 busy 40% of the time
    after = stat_file(tmp_path, "after", [(120, 100), (100, 120), (108, 112)])
    mask = {0, 1, 2, 3}
    assert core_times(mask, before)[0] == (100, 200)  # (idle incl. iowait, total ticks)
    assert sorted(core_times(mask, before)) == [0, 1, 2]
    assert busy_between(core_times(mask, before), core_times(mask, after)) == pytest.approx(1.4)
    assert busy_between(core_times({1, 2}, before), core_times({1, 2}, after)) == pytest.approx(0.4)
    assert core_times(mask, tmp_path / "missing") == {}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_a_core_kept_busy_by_another_process_is_seen_and_left_to_it(monkeypatch):
    core = sorted(os.sched_getaffinity(0))[-1]
    spin = subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])
    try:
        import time

        time.sleep(1.0)  # the spinner is up and pinned
        assert busy_cores({core}) == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        plan = ThreadPlan.here()
        assert plan.busy >= 1 and plan.threads == share_of_cores(plan.cores, plan.quota, 1, plan.busy)
        assert plan.threads < plan.cores and "kept busy by other processes" in plan.describe()
    finally:
        spin.kill()
        spin.wait()


def test_a_resumed_run_keeps_its_recorded_count_unless_the_user_sets_one(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with cpu_threads(saved=3) as plan:
        assert (plan.threads, plan.source, torch.get_num_threads()) == (3, "checkpoint", 3)
        assert "the resumed checkpoint recorded" in plan.describe()
    assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert ThreadPlan.here(saved=3).source == "OMP_NUM_THREADS"


def write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def test_cgroup_v2_quota_is_the_smallest_along_the_path(tmp_path):
    write(tmp_path / "job", "cpu.max", "200000 100000\n")
    write(tmp_path / "job" / "step", "cpu.max", "max 100000\n")
    assert cgroup_quota(tmp_path, "0::/job/step\n") == 2.0
    write(tmp_path / "job" / "step", "cpu.max", "150000 100000\n")
    assert cgroup_quota(tmp_path, "0::/job/step\n") == 1.5
    assert cgroup_quota(tmp_path, "0::/elsewhere\n") is None  # no cpu.max anywhere on that path


def test_cgroup_v1_quota_and_a_container_view(tmp_path):
    folder = tmp_path / "cpu,cpuacct" / "slurm" / "job_7"
    write(folder, "cpu.cfs_quota_us", "300000\n")
    write(folder, "cpu.cfs_period_us", "100000\n")
    membership = "5:memory:/slurm/job_7\n4:cpu,cpuacct:/slurm/job_7\n0::/\n"
    assert cgroup_quota(tmp_path, membership) == 3.0
    write(folder, "cpu.cfs_quota_us", "-1\n")
    assert cgroup_quota(tmp_path, membership) is None  # -1: no quota
    # a container sees its own cgroup as the root, while /proc/self/cgroup names the host's path
    write(tmp_path / "cpu,cpuacct", "cpu.cfs_quota_us", "50000\n")
    write(tmp_path / "cpu,cpuacct", "cpu.cfs_period_us", "100000\n")
    assert cgroup_quota(tmp_path, "4:cpu,cpuacct:/docker/abc\n") == 0.5


def test_ranks_share_cores_on_one_kernel_with_overlapping_masks():
    me = ("boot-a", (0, 1, 2, 3))
    two_nodes_one_host = [me, ("boot-a", (0, 1, 2, 3))]
    assert sharing(me, two_nodes_one_host) == 2
    assert sharing(me, [me, ("boot-b", (0, 1, 2, 3))]) == 1  # another machine
    assert sharing(me, [me, ("boot-a", (4, 5, 6, 7))]) == 1  # bound to other cores of this host
    assert sharing(me, [me, ("boot-a", (3, 4)), ("boot-b", (0,)), ("boot-a", (0,))]) == 3


def test_without_a_process_group_the_launchers_count_is_used(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert ranks_sharing_cores() == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert ranks_sharing_cores() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="LOCAL_WORLD_SIZE='two'"):
        ranks_sharing_cores()


RANK_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from sc_fm.threads import cpu_threads, ranks_sharing_cores
cores = json.loads(sys.argv[1])
if cores:
    os.sched_setaffinity(0, cores)
dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=2)
ranks = ranks_sharing_cores()
with cpu_threads(ranks) as plan:
    print(json.dumps({"ranks": ranks, "threads": plan.threads}))
dist.destroy_process_group()
"""


def launch_two_nodes(port: int, cores: list[list[int]]) -> list[dict]:
    """Two ranks of one job on this host, each launched as a node of its own
    (``LOCAL_WORLD_SIZE=1``: the launcher counts only itself)."""
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(ROOT)}
        env.pop("OMP_NUM_THREADS", None)
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, json.dumps(cores[rank])], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_two_nodes_on_one_host_are_seen_through_the_process_group():
    shared = sorted(os.sched_getaffinity(0))[:2]
    assert launch_two_nodes(free_port(), [shared, shared]) == [{"ranks": 2, "threads": 1}] * 2
    # pinned to a core each (a launcher that binds ranks to cores): nothing shared
    assert launch_two_nodes(free_port(), [shared[:1], shared[1:]]) == [{"ranks": 1, "threads": 1}] * 2


def run_python(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    result = subprocess.run([sys.executable, "-c", code], env={**environ, "PYTHONPATH": str(ROOT), **env},
                            capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.strip()


PLAN = ("import os, sc_fm, torch\nfrom sc_fm.threads import cpu_threads\n"
        "with cpu_threads(ranks=1) as plan:\n"
        "    print(plan.threads, plan.threads == torch.get_num_threads(), plan.source, os.environ.get('GOMP_SPINCOUNT'),\n"
        "          os.environ.get('OMP_WAIT_POLICY'))")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_a_users_omp_settings_win():
    assert run_python(PLAN).split()[1:] == ["True", "policy", "6000", "None"]  # sc_fm's import bounded the spin
    assert run_python(PLAN, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE") == "1 True OMP_NUM_THREADS None ACTIVE"
    assert run_python(PLAN, GOMP_SPINCOUNT="0").split()[3:] == ["0", "None"]  # the user's spin count stands
    # torch loaded first has read its environment already: sc_fm then leaves it unset
    assert run_python("import os, torch, sc_fm; print(os.environ.get('GOMP_SPINCOUNT'))") == "None"


def blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_setup_blas_threads_leave_the_setup_thread_a_core():
    assert blas_threads(), "numpy's BLAS is loaded"
    before, torch_threads = blas_threads(), torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with setup_blas_threads(beside_setup_thread=True) as threads:
            assert threads == 2 and blas_threads() == {2}
        with setup_blas_threads(beside_setup_thread=False) as threads:
            assert threads == 3 and blas_threads() == {3}
        torch.set_num_threads(1)
        with setup_blas_threads(beside_setup_thread=True) as threads:
            assert threads == 1 and blas_threads() == {1}
    finally:
        torch.set_num_threads(torch_threads)
    assert blas_threads() == before  # restored on the way out
