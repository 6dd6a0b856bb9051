"""``benchmarks/gpu.py --cpu``: the prepared GPU check runs its whole code path on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_on_the_cpu():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--cpu"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("parity: sdpa") for line in lines)
    trained = [line for line in lines if line.startswith("train tiny")]
    assert len(trained) == 2 and "+ activation checkpointing" in trained[1]
    assert all("DeepSpeed ZeRO-2, fp32, 3 steps of 4 cells" in line for line in trained)
    shares = [line for line in lines if "step time (2 profiled steps)" in line]
    for line in shares:  # the breakdown's categories add up to the whole
        assert abs(sum(int(part.rsplit(" ", 1)[1].rstrip("%")) for part in line.split(": ")[1].split(", "))
                   - 100) <= 2
    results = {line.split()[1]: line for line in lines if line.startswith("result: ")}
    assert set(results) == {"attention_sdpa_parity_cpu", "mfu_tiny_cpu", "mfu_tiny_checkpointed_cpu"}
    mfu = float(results["mfu_tiny_cpu"].split("ratio=")[1].split()[0])
    assert 0 < mfu < 1
