"""torch.distributed from torchrun's environment; a single process when not launched by torchrun.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address). Backend: NCCL when the device
is CUDA, gloo on CPU. The only collectives the stages need are a barrier and a SUM all-reduce.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from pc_core.lm import resolve_device


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init(device: str = "auto", timeout_minutes: float = 360.0) -> Context:
    """Join the torchrun process group when WORLD_SIZE > 1 (idempotent); otherwise a one-process context.
    The device is pc_core.lm.resolve_device's: "auto" is this rank's GPU (LOCAL_RANK) or the CPU.

    The timeout is generous because rank 0 alone runs LVD while the others wait in a barrier.
    """
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(0, 1, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not tdist.is_initialized():
        tdist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return Context(tdist.get_rank(), tdist.get_world_size(), dev)


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        tdist.barrier()


def all_reduce_sum(ctx: Context, *tensors: torch.Tensor) -> None:
    """In-place SUM over ranks; one collective per tensor (a handful per EM step)."""
    if ctx.distributed:
        for tensor in tensors:
            tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)


def shutdown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()
