"""Process layout: rank and world size from the launcher, device, process group, batch plan.

``deepspeed`` and ``torchrun`` both export ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a bare
``scfm pretrain`` is one process. CPU runs use the gloo backend, GPU runs NCCL.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sc_fm.config import TrainConfig
from sc_fm.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistEnv":
        def read(name: str, default: int) -> int:
            text = os.environ.get(name)
            if text is None:
                return default
            try:
                return int(text)
            except ValueError as err:
                raise ConfigError(f"environment variable {name}={text!r} is not an integer", "environment",
                                  "launch through launch/local.sh, torchrun or deepspeed") from err

        env = cls(read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0))
        if not 0 <= env.rank < env.world_size:
            raise ConfigError(f"RANK={env.rank} is outside WORLD_SIZE={env.world_size}", "environment",
                              "launch through launch/local.sh, torchrun or deepspeed")
        return env

    def device(self) -> torch.device:
        """This rank's GPU when CUDA is available, else the CPU."""
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank % torch.cuda.device_count())
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def accumulation_steps(train: TrainConfig, world_size: int) -> int:
    """Micro-batches per optimizer step so that ``global = micro * accumulation * world``.

    The global batch (in cells) is what the config fixes; changing the number of processes
    changes only the accumulation, so the optimisation is the same run at any world size.
    """
    per_step = train.micro_batch_cells * world_size
    if train.global_batch_cells % per_step:
        fits = [w for w in range(1, train.global_batch_cells // train.micro_batch_cells + 1)
                if train.global_batch_cells % (train.micro_batch_cells * w) == 0]
        raise ConfigError(
            f"train.global_batch_cells={train.global_batch_cells} is not divisible by "
            f"train.micro_batch_cells={train.micro_batch_cells} x world size {world_size}", "config",
            f"use a world size in {fits}, or choose micro_batch_cells so that micro x {world_size} "
            f"divides {train.global_batch_cells}")
    return train.global_batch_cells // per_step


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_process_group(env: DistEnv, device: torch.device) -> bool:
    """Join (or, for a lone process, create) the default process group; True if created here.

    DeepSpeed needs a process group even for one process; a bare run gets a private
    loopback rendezvous so that it never collides with another run on the machine.
    """
    if env.world_size == 1:  # DeepSpeed reads these even for one process
        for key in ("RANK", "LOCAL_RANK"):
            os.environ.setdefault(key, "0")
        os.environ.setdefault("WORLD_SIZE", "1")
    if dist.is_initialized():
        return False
    if "MASTER_ADDR" not in os.environ and env.world_size == 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    return True


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over ranks (identity without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
