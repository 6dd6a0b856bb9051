"""The installed wheel works on its own: presets, shipped data and configs come from package data.

The wheel is built from this checkout and installed ``--no-deps`` into a fresh virtual
environment that sees the test environment's packages through a path entry (so nothing is
downloaded, and the checkout's editable finder is not active there); every command then runs
from an empty directory, far from the checkout's ``configs/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(command: list[str], cwd: Path, env: dict) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _outside_the_source(directory: str, names: list[str]) -> set[str]:
    """What a build must not see: environments, outputs and caches at the top, caches anywhere."""
    top = {".git", ".venv", "build", "dist", "demo_out", "runs", "mlruns", "mlartifacts", "mlflow.db"}
    return {n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith(".egg-info")
            or (Path(directory) == ROOT and n in top)}


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> tuple[Path, dict]:
    """``(bin directory of a venv with only the wheel installed, its environment)``."""
    base = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    source = base / "source"  # a copy, so the build leaves nothing in the checkout (nor reuses its build/)
    shutil.copytree(ROOT, source, symlinks=True, ignore=_outside_the_source)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(base / "dist"),
          str(source)], base, env)
    wheel = next((base / "dist").glob("sc_fm-*.whl"))
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base, env)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     base, env).strip())
    (site / "test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], base, env)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return venv / "bin", env


def test_installed_wheel_prepares_pretrains_and_embeds_from_an_empty_directory(wheel_env, tmp_path):
    bin_dir, env = wheel_env
    work = tmp_path / "empty"
    work.mkdir()
    located = _run([str(bin_dir / "python"), "-c",
                    "import sc_fm, sc_fm.config as c; print(sc_fm.__file__); print(c.shipped_config('sc_mixology', 'data'))"],
                   work, env).split()
    assert not located[0].startswith(str(ROOT))  # the wheel's copy, not the checkout
    scfm = str(bin_dir / "scfm")
    _run([scfm, "prepare", located[1], "-o", "mixology.zarr", "--quiet"], work, env)
    _run([scfm, "pretrain", "--config", "tiny", "-o", "run", "data.stores=[mixology.zarr]", "train.max_steps=2",
          "train.checkpoint_every=2", "tokenizer.max_len=32", "train.warmup_steps=1", "tracking.enabled=false",
          "data.num_workers=0"], work, env)
    assert (work / "run" / "final" / "tokenizer" / "tokenizer.json").is_file()
    _run([str(bin_dir / "python"), "-c",
          "from sc_fm.datasets import load_sc_mixology; load_sc_mixology()[:60].copy().write_h5ad('cells.h5ad')"],
         work, env)
    printed = _run([scfm, "embed", "run/final", "cells.h5ad", "-o", "embedded.h5ad", "--no-progress"], work, env)
    assert "wrote obsm['X_scfm'] (60 cells x 128)" in printed
