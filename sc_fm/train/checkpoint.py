"""Checkpoint directories: what goes into one, atomic publication, retention, discovery for resume.

A checkpoint ``step_N/`` holds the engine state (weights, optimizer, scheduler), one
``rank_R.json`` per rank (step, RNG states, loader position), ``trainer_state.json``, the
resolved ``config.yaml`` and a ``Pretrained`` directory's files (model and tokenizer), so
``scfm embed`` accepts any checkpoint. Nothing in it is read back through pickle.

Every rank writes into ``checkpoints/.step_N.partial``; once all ranks are done, rank 0 renames
it to ``checkpoints/step_N`` (a single atomic ``rename``), so a directory named ``step_N`` is
always complete: a crash mid-write leaves only a hidden partial directory, ignored and
cleared by the next save.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from sc_fm.config import move_keys, resumable_keys
from sc_fm.data.plan import ORDER_BEFORE_BLOCK_ORDERS
from sc_fm.errors import ConfigError, InputDataError
from sc_fm.outputs import fsync_path, is_write_failure, write_failed
from sc_fm.rundir import CHECKPOINTS_DIR, RUN_CONFIG_FILE, TRAINER_STATE_FILE
from sc_fm.train.distributed import DistEnv, barrier

_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointManager:
    """Writes ``RUN_DIR/checkpoints/step_N/`` and keeps the newest ``keep_last`` of them."""

    def __init__(self, run_dir: str | Path, keep_last: int, env: DistEnv):
        self.root = Path(run_dir) / CHECKPOINTS_DIR
        self.keep_last = keep_last
        self.env = env

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = (_STEP_DIR.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def path(self, step: int) -> Path:
        return self.root / f"step_{step}"

    def latest(self) -> Path | None:
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def latest_usable(self, world_size: int) -> Path | None:
        """The newest checkpoint whose files are all present and readable; a damaged newer
        one (a disk that filled up, a hand edit) is skipped with a message naming the problem."""
        for step in reversed(self.steps()):
            problem = checkpoint_problem(self.path(step), world_size)
            if problem is None:
                return self.path(step)
            if self.env.is_main:
                print(f"scfm pretrain: skipping checkpoint {self.path(step)}: {problem}; trying the one before",
                      file=sys.stderr)
        if self.steps():
            raise InputDataError("no checkpoint in the run directory is complete and readable", str(self.root),
                                 "start a new run directory (the messages above say what is damaged)")
        return None

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Call ``write(tmp_dir)`` on every rank, then publish ``step_N`` atomically and prune."""
        tmp = self.root / f".step_{step}.partial"
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        try:
            write(tmp)
        except Exception as err:
            if not is_write_failure(err):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            raise write_failed(err, tmp, "the previous checkpoints are intact (resume from them with "
                               "--resume)") from err
        barrier()
        final = self.path(step)
        if self.env.is_main:
            if final.exists():  # the same step written again (e.g. resumed exactly at the end)
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_path(self.root)
            self._prune()
        barrier()
        return final

    def _prune(self) -> None:
        for step in self.steps()[:-self.keep_last]:
            shutil.rmtree(self.path(step), ignore_errors=True)


# Settings that may change when a run is resumed; every other setting must match the checkpoint.
RESUMABLE_CHANGES = resumable_keys()

# The behaviour of a run saved before a setting existed (its config.yaml lacks the key).
SETTINGS_BEFORE_THEY_EXISTED = {"data.block_order": ORDER_BEFORE_BLOCK_ORDERS}

# Before JSON rank states, ``rank_R.pt`` was a pickle; reading one runs whatever it holds.
ALLOW_PICKLED_ENV = "SCFM_ALLOW_PICKLED_CHECKPOINTS"


def rank_state_file(rank: int) -> str:
    """Per-rank file with the step, RNG states and data-loader position."""
    return f"rank_{rank}.json"


def write_rank_state(directory: Path, rank: int, state: dict) -> None:
    (directory / rank_state_file(rank)).write_text(json.dumps(state) + "\n")


def read_rank_state(checkpoint: Path, rank: int) -> dict:
    """This rank's ``{"step", "rng", "loader"}``; a pickled file of an older sc_fm only on opt-in."""
    path = checkpoint / rank_state_file(rank)
    legacy = checkpoint / f"rank_{rank}.pt"
    if not path.is_file() and legacy.is_file():
        if os.environ.get(ALLOW_PICKLED_ENV) != "1":
            raise InputDataError(f"{legacy.name} was written by an older sc_fm as a pickle, which can run "
                                 f"code when read", str(checkpoint),
                                 f"if you wrote this run yourself, resume once with {ALLOW_PICKLED_ENV}=1 "
                                 f"(the next checkpoint is saved as JSON); otherwise start a new run")
        import torch

        state = torch.load(legacy, map_location="cpu", weights_only=False)
        return json.loads(json.dumps({**state, "rng": _legacy_rng(state["rng"])}))
    try:
        state = json.loads(path.read_text())
        _ = state["step"], state["rng"], state["loader"]
    except FileNotFoundError as err:
        raise InputDataError(f"{path.name} is missing", str(checkpoint),
                             "resume from a complete checkpoint (every rank writes its own file)") from err
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputDataError(f"{path.name} is damaged ({err})", str(checkpoint),
                             "delete this checkpoint directory to resume from the previous one") from err
    return state


def recorded_threads(checkpoint: Path, rank: int) -> int | None:
    """The CPU thread count this rank trained with (``sc_fm/threads.py``); None for a GPU run or a
    checkpoint written before the count was recorded."""
    threads = read_rank_state(checkpoint, rank).get("threads")
    return int(threads) if isinstance(threads, int) and threads >= 1 else None


def _legacy_rng(rng: dict) -> dict:
    """The pickled RNG states of an older checkpoint in today's JSON form."""
    version, internal, gauss = rng["python"]
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    out = {"python": [version, list(internal), gauss],
           "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
           "torch": rng["torch"].tolist()}
    if "cuda" in rng:
        out["cuda"] = [s.tolist() for s in rng["cuda"]]
    return out


def checkpoint_problem(checkpoint: Path, world_size: int) -> str | None:
    """What makes ``checkpoint`` unusable for resuming, or None: every file a resume reads must
    be there and parse (the weights' header included), for every rank."""
    from safetensors import SafetensorError, safe_open

    from sc_fm.model.io import WEIGHTS_FILE
    from sc_fm.train.engines import DEEPSPEED_TAG, ENGINE_STATE_FILE

    try:
        state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
        yaml.safe_load((checkpoint / RUN_CONFIG_FILE).read_text())
        with safe_open(str(checkpoint / WEIGHTS_FILE), "pt") as weights:
            weights.keys()
        if not ((checkpoint / ENGINE_STATE_FILE).is_file() or (checkpoint / DEEPSPEED_TAG).is_dir()):
            return "the engine state is missing"
        if (checkpoint / ENGINE_STATE_FILE).is_file():
            problem = _engine_state_problem(checkpoint / ENGINE_STATE_FILE)
            if problem:
                return problem
        for rank in range(int(state.get("world_size", world_size))):
            if not ((checkpoint / rank_state_file(rank)).is_file() or (checkpoint / f"rank_{rank}.pt").is_file()):
                return f"{rank_state_file(rank)} is missing"
            if (checkpoint / rank_state_file(rank)).is_file():
                json.loads((checkpoint / rank_state_file(rank)).read_text())
    except FileNotFoundError as err:
        return f"{Path(err.filename).name} is missing"
    except (json.JSONDecodeError, yaml.YAMLError, SafetensorError, OSError, AttributeError, TypeError) as err:
        return f"a file is damaged ({type(err).__name__}: {str(err)[:120]})"
    return None


def _engine_state_problem(path: Path) -> str | None:
    """Whether the plain engine's state reads as tensors only (mapped, not loaded): a damaged
    or crafted file is a reason to fall back to the previous checkpoint, never to run it."""
    import pickle

    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        return f"{path.name} is damaged or holds more than tensors ({type(err).__name__}: " \
               f"{str(err).splitlines()[0][:120] if str(err) else ''})"
    return None


def data_identity(stores: list) -> list[dict]:
    """What the run trains on, recorded at its start: an append or a rewrite under the same
    path changes it (the batch sequence would no longer be the same)."""
    return [{"path": str(store.path), "n_cells": int(store.n_cells), "stats_version": store.stats_version,
             "shards": [[s.name, int(s.n_cells)] for s in store.shards]} for store in stores]


def check_same_data(checkpoint: Path, stores: list) -> None:
    """Refuse to resume on stores whose content changed since the checkpoint was written."""
    recorded = json.loads((checkpoint / TRAINER_STATE_FILE).read_text()).get("data")
    if recorded is None:  # written before the data was recorded
        return
    for before, now in zip(recorded, data_identity(stores)):
        if before != now:
            raise ConfigError(f"store {now['path']} changed since checkpoint {checkpoint} was written "
                              f"({before['n_cells']} cells in {len(before['shards'])} shards then, "
                              f"{now['n_cells']} in {len(now['shards'])} now)", "--resume",
                              "resume on the data the run started with, start a new run directory, or pass "
                              "train.allow_data_change=true to continue on the changed store (not an exact "
                              "resume)")


def write_trainer_state(directory: Path, state: dict) -> None:
    (directory / TRAINER_STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        if name in RESUMABLE_CHANGES:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, f"{name}.")
        elif a != b:
            keys.append(name)
    return keys


def check_resumable(checkpoint: Path, config: dict, world_size: int) -> None:
    """Refuse to resume with settings that would make it a different run."""
    state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
    if state["world_size"] != world_size:
        raise ConfigError(f"checkpoint {checkpoint} was written by {state['world_size']} processes, this run "
                          f"has {world_size}", "--resume",
                          f"resume with {state['world_size']} processes (each rank resumes its own share of "
                          f"the data), or start a new run directory")
    saved = move_keys(yaml.safe_load((checkpoint / RUN_CONFIG_FILE).read_text()))  # older key names
    for dotted, value in SETTINGS_BEFORE_THEY_EXISTED.items():  # what a run saved before the key existed did
        section, key = dotted.split(".")
        if isinstance(saved.get(section), dict):
            saved[section].setdefault(key, value)
    changed = _differences(saved, config)
    if changed:
        raise ConfigError(f"{changed[0]} differs from the checkpoint {checkpoint} (saved: "
                          f"{_lookup(saved, changed[0])!r})", "--resume",
                          f"resume with the saved value, or start a new run directory; only "
                          f"{', '.join(sorted(RESUMABLE_CHANGES))} may change")


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree
