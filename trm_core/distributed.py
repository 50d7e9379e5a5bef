"""Process-group set-up for torchrun: one process per GPU (or several CPU processes on gloo).

Input: the environment torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT).
Output: (rank, world_size, device), with the process group initialised when world_size > 1
(NCCL on GPUs, gloo on CPU). Without torchrun it returns (0, 1, the default device).

A hung GPU group must end in an error, not in a job that waits out its whole time limit: the
group has a timeout (TRM_PG_TIMEOUT_S, default 600 s, for the rendezvous and every collective),
and NCCL is told to fail a stuck collective instead of blocking (async error handling, the
watchdog's heartbeat). Settings already in the environment are kept.
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from collections.abc import Iterator, MutableMapping

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


DEFAULT_TIMEOUT_S = 600.0
# Each turns an NCCL hang into an error that ends the process (names of torch >= 2.2, and the older ones).
NCCL_ENV = {
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # a timed-out collective aborts the communicator and raises
    "NCCL_ASYNC_ERROR_HANDLING": "1",
    "TORCH_NCCL_BLOCKING_WAIT": "0",  # leave detection to the watchdog (no per-call busy wait)
    "TORCH_NCCL_ENABLE_MONITORING": "1",  # kill a process whose NCCL watchdog itself is stuck
    "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": "120",
}


def hang_settings(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Put the NCCL settings into `env` (default os.environ) where they are not set already."""
    env = os.environ if env is None else env
    for k, v in NCCL_ENV.items():
        env.setdefault(k, v)
    return env


def group_timeout(env: MutableMapping[str, str] | None = None) -> datetime.timedelta:
    """The process group's timeout: $TRM_PG_TIMEOUT_S seconds, default 600."""
    env = os.environ if env is None else env
    try:
        seconds = float(env.get("TRM_PG_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    except ValueError:
        raise ValueError(f"TRM_PG_TIMEOUT_S must be a number of seconds, got {env['TRM_PG_TIMEOUT_S']!r}") from None
    return datetime.timedelta(seconds=max(1.0, seconds))


def init_from_env(device: str | None = None, timeout_s: float | None = None) -> tuple[int, int, torch.device]:
    """Join the torchrun process group if there is one; pick this process's device. `timeout_s`
    (default $TRM_PG_TIMEOUT_S or 600) bounds the rendezvous and every collective."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = default_device()
    else:
        dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            hang_settings()
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s) if timeout_s else group_timeout())
    return rank, world, dev


@contextmanager
def process_group(device: str | None = None, timeout_s: float | None = None
                  ) -> Iterator[tuple[int, int, torch.device]]:
    """`with process_group() as (rank, world, device):` and the group is torn down afterwards."""
    rank, world, dev = init_from_env(device, timeout_s)
    try:
        yield rank, world, dev
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
